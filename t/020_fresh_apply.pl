# Whole-table pulls into empty tables go straight into the heap and the
# indexes (no INSERT statement).  This checks that the rows stored, and
# the checks made, are exactly those of the INSERT it replaces:
#
#  - many types, NULLs, a composite key and a domain arrive intact, in
#    several write batches, with versions, origins and tombstones;
#  - an ordinary user trigger does not fire (session_replication_role is
#    replica, as for logical replication), one enabled ALWAYS does, for
#    every row (such a table goes through the statement instead);
#  - a CHECK constraint, a NOT NULL constraint and a domain's CHECK that
#    exist only on the puller refuse the whole batch, with the
#    constraint's own error, and the other tables carry on.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $na = new_node('fa_a');
my $nb = new_node('fa_b');

sql($_, q{CREATE DOMAIN weight AS int CHECK (VALUE >= 0)}) for ($na, $nb);
my $typed = q{CREATE TABLE typed (name text, zone int, since timestamptz,
  doc jsonb, amount numeric(12,3), note text, w weight, tags text[], raw bytea,
  PRIMARY KEY (name, zone, since))};
create_table([ $na, $nb ], 'typed', $typed);

# a trigger left at the default (fires only for local writes) ...
sql($nb, q{CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN RAISE EXCEPTION 'ordinary trigger fired'; END$$});
sql($nb, q{CREATE TRIGGER refuse BEFORE INSERT ON typed FOR EACH ROW EXECUTE FUNCTION refuse()});

# ... and one enabled ALWAYS, which must see every applied row
create_table([ $na, $nb ], 'trg', 'CREATE TABLE trg (id int PRIMARY KEY, val text)');
sql($nb, q{CREATE TABLE trg_log (id int, val text)});
# (the apply session's search_path is pg_catalog, as logical replication's is)
sql($nb, q{CREATE FUNCTION log_trg() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN INSERT INTO public.trg_log VALUES (NEW.id, NEW.val); RETURN NEW; END$$});
sql($nb, q{CREATE TRIGGER log_trg AFTER INSERT ON trg FOR EACH ROW EXECUTE FUNCTION log_trg()});
sql($nb, q{ALTER TABLE trg ENABLE ALWAYS TRIGGER log_trg});

# constraints only the puller has
create_table([$na], 'chk', 'CREATE TABLE chk (id int PRIMARY KEY, val text)');
create_table([$nb], 'chk',
	q{CREATE TABLE chk (id int PRIMARY KEY, val text CONSTRAINT val_not_bad CHECK (val <> 'bad'))});
create_table([$na], 'nn', 'CREATE TABLE nn (id int PRIMARY KEY, val text)');
create_table([$nb], 'nn', 'CREATE TABLE nn (id int PRIMARY KEY, val text NOT NULL)');
sql($na, q{CREATE DOMAIN level AS int});
sql($nb, q{CREATE DOMAIN level AS int CONSTRAINT level_positive CHECK (VALUE > 0)});
create_table([ $na, $nb ], 'dm', 'CREATE TABLE dm (id int PRIMARY KEY, lvl level)');

# the source's rows, in several sessions' settings
sql($na, q{SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'SQL, DMY';
INSERT INTO typed
SELECT 'svc-' || (g % 97), g % 7, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute 0.25 s',
       CASE WHEN g % 11 = 0 THEN NULL
            ELSE jsonb_build_object('endpoints', jsonb_build_array('10.0.' || (g % 250) || '.1:8080'), 'g', g) END,
       CASE WHEN g % 13 = 0 THEN NULL ELSE g / 7.0 END,
       CASE WHEN g % 5 = 0 THEN NULL ELSE E'line\nwith \\ and \t and ''quotes'' ' || g END,
       g % 1000,
       CASE WHEN g % 17 = 0 THEN NULL ELSE ARRAY['a' || g, NULL, 'c'] END,
       CASE WHEN g % 19 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END
FROM generate_series(1, 3000) g});
sql($na, q{DELETE FROM typed WHERE zone = 3 AND name = 'svc-5'});
sql($na, q{INSERT INTO trg SELECT g, 'v' || g FROM generate_series(1, 300) g});
sql($na, q{INSERT INTO chk SELECT g, CASE WHEN g = 25 THEN 'bad' ELSE 'ok' END FROM generate_series(1, 50) g});
sql($na, q{INSERT INTO nn SELECT g, CASE WHEN g = 30 THEN NULL ELSE 'ok' END FROM generate_series(1, 50) g});
sql($na, q{INSERT INTO dm SELECT g, CASE WHEN g = 40 THEN -1 ELSE g END FROM generate_series(1, 50) g});
my $deleted = sql($na, q{SELECT count(*) FROM registry.versions('typed') WHERE deleted});
cmp_ok($deleted, '>', 0, "the source has $deleted tombstones in typed");

my $log_start = -s $nb->logfile;
add_peer($nb, $na);

wait_converged([ $na, $nb ], [ 'typed', 'trg' ],
	'typed and trg arrive whole, with versions and tombstones', sync_ok => 0);
is(sql($nb, q{SELECT count(*) FROM typed}), sql($na, q{SELECT count(*) FROM typed}),
	'fa_b has as many rows of typed as fa_a');
is( sql($nb, q{SELECT count(*) FILTER (WHERE doc IS NULL), count(*) FILTER (WHERE note IS NULL),
  count(*) FILTER (WHERE tags IS NULL), count(*) FILTER (WHERE raw IS NULL) FROM typed}),
	sql($na, q{SELECT count(*) FILTER (WHERE doc IS NULL), count(*) FILTER (WHERE note IS NULL),
  count(*) FILTER (WHERE tags IS NULL), count(*) FILTER (WHERE raw IS NULL) FROM typed}),
	'NULLs arrive as NULLs');
is( sql($nb, q{SELECT count(*) FROM registry.versions('typed') WHERE origin = 'fa_a'}),
	sql($na, q{SELECT count(*) FROM registry.versions('typed')}),
	'every key of typed on fa_b carries fa_a as its origin');
is(sql($nb, q{SELECT count(*), count(DISTINCT id) FROM trg_log}), '300|300',
	'the ALWAYS trigger on fa_b saw each of the 300 rows of trg once');
is( sql($nb, q{SELECT count(*) FROM trg_log l JOIN trg t USING (id, val)}), '300',
	'... with the values stored');

# the three tables whose rows fa_b's constraints refuse
my $rounds = peer_status($nb, 'fa_a', 'rounds');
ok(poll_until(sub { peer_status($nb, 'fa_a', 'rounds') > $rounds + 1 }),
	'fa_b completed more rounds with fa_a');
for my $t (qw(chk nn dm))
{
	is(sql($nb, "SELECT count(*) FROM $t"), '0', "fa_b has no row of $t: the batch was refused whole");
	is(sql($nb, "SELECT count(*) FROM registry.versions('$t')"), '0',
		"... and no version of $t");
	is(sql($na, "SELECT count(*) FROM $t"), '50', "fa_a still has its 50 rows of $t");
}
my $log = slurp_file($nb->logfile, $log_start);
like($log, qr/violates check constraint "val_not_bad"/,
	'the CHECK constraint refused chk\'s batch, in its own words');
like($log, qr/null value in column "val" of relation "nn" violates not-null constraint/,
	'the NOT NULL constraint refused nn\'s batch');
like($log, qr/value for domain (public\.)?level violates check constraint "level_positive"/,
	'the domain refused dm\'s batch');
unlike($log, qr/ordinary trigger fired/, 'the ordinary trigger never fired');
cmp_ok(peer_status($nb, 'fa_a', 'errors'), '>=', 3, 'fa_b counted the errors');

# once the rows are fixed at the source, they arrive
sql($na, q{UPDATE chk SET val = 'fixed' WHERE val = 'bad'});
sql($na, q{UPDATE nn SET val = 'fixed' WHERE val IS NULL});
sql($na, q{UPDATE dm SET lvl = 1 WHERE lvl < 0});
wait_converged([ $na, $nb ], [ 'typed', 'trg', 'chk', 'nn', 'dm' ],
	'after the fixes every table is identical');

# a local write on fa_b afterwards is stamped and travels back
add_peer($na, $nb);
sql($nb, q{INSERT INTO trg VALUES (1000, 'from b')});
wait_converged([ $na, $nb ], ['trg'], 'a row written on fa_b reaches fa_a');
check_verify([ $na, $nb ], 'after the fresh pulls');

$_->stop for ($na, $nb);
done_testing();
