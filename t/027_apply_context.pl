# Errors and warnings raised while a peer's row is applied say which row:
# a CONTEXT line names the peer, the table, and the row's key, version
# and origin (as PostgreSQL's own apply worker does).
#
#  - a CHECK constraint only the puller has refuses a row that came by the
#    change stream, one row at a time: the row's origin is a third node,
#    so peer and origin differ;
#  - the same for a row of a whole-table pull into an empty table, which
#    goes straight into the heap (insert_fresh_direct);
#  - a whole-table pull that a user trigger sends through the one bulk
#    statement names how many rows it writes and the first of them;
#  - a WARNING raised by a user trigger enabled ALWAYS carries the same
#    context;
#  - the refused rows are not applied, and once the constraints are
#    dropped they arrive with their versions: nothing is lost.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $na = new_node('ctx_a');
my $nb = new_node('ctx_b');

# svc: rows arrive by the change stream; ctx_b refuses v = 'poison'
create_table([$na], 'svc', 'CREATE TABLE svc (k text PRIMARY KEY, v text)');
create_table([$nb], 'svc',
	q{CREATE TABLE svc (k text PRIMARY KEY, v text CONSTRAINT v_not_poison CHECK (v <> 'poison'))});
# a trigger on ctx_b that warns about one value, enabled ALWAYS so that it
# fires for applied rows
sql($nb, q{CREATE FUNCTION warn_watched() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN IF NEW.v = 'watched' THEN RAISE WARNING 'svc trigger saw %', NEW.k; END IF; RETURN NEW; END$$});
sql($nb, q{CREATE TRIGGER warn_watched BEFORE INSERT OR UPDATE ON svc FOR EACH ROW EXECUTE FUNCTION warn_watched()});
sql($nb, q{ALTER TABLE svc ENABLE ALWAYS TRIGGER warn_watched});

# pull: pulled whole into an empty table; ctx_b refuses id 25's value
create_table([$na], 'pull', 'CREATE TABLE pull (id int PRIMARY KEY, val text)');
create_table([$nb], 'pull',
	q{CREATE TABLE pull (id int PRIMARY KEY, val text CONSTRAINT val_not_bad CHECK (val <> 'bad'))});
sql($na, q{INSERT INTO pull SELECT g, CASE WHEN g = 25 THEN 'bad' ELSE 'ok' END FROM generate_series(1, 50) g});

# bulk: pulled whole too, but a trigger enabled ALWAYS on ctx_b (which
# refuses id 30's value) sends the rows through the bulk statement
create_table([ $na, $nb ], 'bulk', 'CREATE TABLE bulk (id int PRIMARY KEY, val text)');
sql($nb, q{CREATE FUNCTION refuse_bad() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN IF NEW.val = 'bad' THEN RAISE EXCEPTION 'bulk trigger refused %', NEW.id; END IF; RETURN NEW; END$$});
sql($nb, q{CREATE TRIGGER refuse_bad BEFORE INSERT OR UPDATE ON bulk FOR EACH ROW EXECUTE FUNCTION refuse_bad()});
sql($nb, q{ALTER TABLE bulk ENABLE ALWAYS TRIGGER refuse_bad});
sql($na, q{INSERT INTO bulk SELECT g, CASE WHEN g = 30 THEN 'bad' ELSE 'ok' END FROM generate_series(1, 40) g});

my $log_start = -s $nb->logfile;
add_peer($nb, $na);

# The apply context of the first log entry of ctx_b matching $re, once
# ctx_b has logged it: the entry's CONTEXT lines follow it, the first as
# "CONTEXT:  ...", the others each on a line of its own after a tab.
sub context_after
{
	my ($re) = @_;
	my $ctx;
	poll_until(
		sub {
			my $log = slurp_file($nb->logfile, $log_start);
			return 0 unless $log =~ /$re[^\n]*\n((?:(?:\t|[^\n]*\] (?:DETAIL|HINT|CONTEXT):  )[^\n]*\n)*)/;
			my $entry = $1;
			$ctx = $1 if $entry =~ /(?:CONTEXT:  |^\t)(applying [^\n]*)/m;
			return 1;
		});
	return $ctx // '';
}

# one row's version and origin on ctx_a, from its registry columns
sub version_origin
{
	my ($table, $where) = @_;
	return split /\|/,
	  sql($na, "SELECT registry_version, registry_origin FROM $table WHERE $where");
}

# 1. a row of a whole-table pull refused by a CHECK constraint
my ($pv, $po) = version_origin('pull', 'id = 25');
my $ctx = context_after(qr/registry: peer "ctx_a": new row for relation "pull" violates check constraint "val_not_bad"/);
note("pull: CONTEXT: $ctx");
like($ctx, qr/\bkey "25"/, 'pull: the context names the refused key');
like($ctx, qr/\btable public\.pull\b/, 'pull: ... the table');
like($ctx, qr/\bfrom peer "ctx_a"/, 'pull: ... the peer');
like($ctx, qr/\bversion \Q$pv\E\b/, "pull: ... the row's version ($pv), as ctx_a has it");
like($ctx, qr/\borigin "\Q$po\E"/, "pull: ... and its origin ($po)");

# 1b. a row of the bulk statement, refused by a user trigger: the context
# names the first row of the statement, whichever the answer put first
$ctx = context_after(qr/registry: peer "ctx_a": bulk trigger refused 30/);
note("bulk: CONTEXT: $ctx");
like($ctx,
	qr/^applying 40 rows of table public\.bulk from peer "ctx_a" at once, the first: key "\d+", version \d+, origin "ctx_a"$/,
	'bulk: the context names the table, the peer, the number of rows and the first');
my ($bk) = $ctx =~ /key "(\d+)"/;
my ($bv, $bo) = version_origin('bulk', 'id = ' . ($bk // 0));
like($ctx, qr/key "\Q$bk\E", version \Q$bv\E, origin "\Q$bo\E"$/,
	"bulk: ... with the version and origin that row has on ctx_a")
  if defined $bk;

# ctx_b follows ctx_a's change log from here on
ok( $nb->poll_query_until('postgres', q{
SELECT rounds > 0 AND state IN ('streaming', 'anti-entropy')
FROM registry.peer_status WHERE peer = 'ctx_a'}),
	'ctx_b is connected to ctx_a and has finished a round');

# 2. a WARNING from a user trigger
sql($na, q{INSERT INTO svc VALUES ('w1', 'watched')});
my ($wv, $wo) = version_origin('svc', q{k = 'w1'});
$ctx = context_after(qr/WARNING:  svc trigger saw w1/);
note("svc warning: CONTEXT: $ctx");
like($ctx,
	qr/^applying the row of key "w1" of table public\.svc from peer "ctx_a", version \Q$wv\E, origin "\Q$wo\E"$/,
	'a warning of a user trigger carries the row\'s context');
wait_converged([ $na, $nb ], ['svc'], 'the watched row arrives', sync_ok => 0);

# 3. a row of the change stream, written on ctx_a as if it came from a
# third node, refused by a CHECK constraint on ctx_b
is( sql($na, q{SELECT registry.apply_row('svc', 'p1', registry.hlc_now(), 'ctx_c', false,
  '{"k": "p1", "v": "poison"}')}),
	'applied', 'ctx_a has row p1 from origin ctx_c');
my ($sv, $so) = version_origin('svc', q{k = 'p1'});
is($so, 'ctx_c', "p1's origin on ctx_a is ctx_c");
is(sql($na, q{SELECT key FROM registry.versions('svc') WHERE key = 'p1'}),
	'p1', "p1's registry key is p1");
sql($na, q{INSERT INTO svc VALUES ('ok1', 'fine')});
$ctx = context_after(qr/registry: peer "ctx_a": new row for relation "svc" violates check constraint "v_not_poison"/);
note("svc: CONTEXT: $ctx");
like($ctx,
	qr/^applying the row of key "p1" of table public\.svc from peer "ctx_a", version \Q$sv\E, origin "ctx_c"$/,
	'svc: the context names key, table, peer, version and origin');

# the refused rows are not there, however long ctx_b keeps trying
my $rounds = peer_status($nb, 'ctx_a', 'rounds');
ok(poll_until(sub { peer_status($nb, 'ctx_a', 'rounds') > $rounds + 1 }),
	'ctx_b completed more rounds with ctx_a');
is(sql($nb, q{SELECT count(*) FROM svc WHERE k = 'p1'}), '0', 'p1 is not applied on ctx_b');
is(sql($nb, q{SELECT count(*) FROM registry.versions('svc') WHERE key = 'p1'}),
	'0', '... and has no version there');
is(sql($nb, q{SELECT count(*) FROM pull WHERE id = 25}), '0', 'pull\'s row 25 is not applied on ctx_b');
is(sql($nb, q{SELECT count(*) FROM bulk}), '0', 'no row of bulk is applied on ctx_b');

# 4. without the constraints, everything arrives
sql($nb, q{ALTER TABLE svc DROP CONSTRAINT v_not_poison});
sql($nb, q{ALTER TABLE pull DROP CONSTRAINT val_not_bad});
sql($nb, q{DROP TRIGGER refuse_bad ON bulk});
wait_converged([ $na, $nb ], [ 'svc', 'pull', 'bulk' ],
	'after the constraints and the trigger are dropped svc, pull and bulk are identical, versions included');
is(sql($nb, q{SELECT v, registry_version, registry_origin FROM svc WHERE k = 'p1'}),
	"poison|$sv|ctx_c", 'p1 arrived on ctx_b with its version and origin');
is(sql($nb, q{SELECT count(*) FROM pull}), '50', 'ctx_b has all 50 rows of pull');
is(sql($nb, q{SELECT count(*) FROM bulk}), '40', 'ctx_b has all 40 rows of bulk');
check_verify([ $na, $nb ], 'after the apply errors');

$_->stop for ($na, $nb);
done_testing();
