# Leases (issue 14) when owners fail: a full mesh f1, f2, f3 and a line
# la - lb - lc, with registry.owner_timeout = 3s and a TTL of 2 s.
#
# A leased row lives while its owner (the node that wrote it) renews it.
# When the owner itself goes away, its direct peers that still reach a
# majority of the mesh delete its rows once they have heard nothing from
# it for registry.owner_timeout; a node cut off from the majority deletes
# nothing of others (self-preservation).  Clients here are real sessions
# running a renewal loop on the server (procedure lease_client below:
# registry.renew() every 0.3 s, each in its own transaction, re-INSERTing
# the keys renew() returns when told to, as the documented client protocol
# does), so renewals go on at their own pace whatever the test does.
#
#  1. f1 is killed (immediate stop): f2 and f3 expire f1's leased rows
#     after owner_timeout (reason expired, expiry "owner"); the leased
#     rows of f2 and f3, renewed by their clients, stay, and so do f1's
#     rows of a persistent table.
#  2. f1 comes back with its clients renewing: the rows the peers deleted
#     were stashed on f1 when their deletes arrived, and renew() writes
#     them again from the stash, as new versions above the tombstones.
#  3. a partition cuts f1 off from f2 and f3 (the peers stay configured
#     but unreachable): the minority f1 expires nothing of f2's and f3's
#     rows and says so (expiry_minority, expiry_held_minority), the
#     majority expires f1's rows; after healing, everything converges and
#     the rows f1's clients kept renewing are back everywhere.
#  4. the line: only direct peers judge an owner.  When la dies, lb (its
#     only peer) expires la's rows after owner_timeout; lc, which never
#     talks to la, does not judge la at all: it receives lb's deletes as
#     ordinary deletes, tombstones of lb.
#
# Every section checks the full contents (keys with their registry_origin)
# on every node it involves and registry.verify() on each.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use RegistryMesh;
use LeaseTest;

my $conf = q{
registry.owner_timeout = '3s'
registry.expiry_interval = '100ms'
};

my @f = map { new_node($_, conf => $conf) } qw(f1 f2 f3);
my ($f1, $f2, $f3) = @f;
setup_tables(\@f);
# fke: f1's rows, one of which (r2) a local table on f2 and f3 still
# refers to when f1 dies: it cannot go, the others must
create_table(\@f, 'fke', 'CREATE TABLE fke (k text PRIMARY KEY, v text)');
sql($_, q{SELECT registry.set_lease('fke', '1h')}) for @f;
full_mesh(@f);

# expected contents: key => origin
my (%eph, %pers);

sql($f1, q{INSERT INTO eph SELECT 'a' || g, 'x' FROM generate_series(1, 5) g;
           INSERT INTO pers SELECT 'p' || g, 'x' FROM generate_series(1, 3) g});
my $cl1 = start_client($f1, [ map { "a$_" } 1 .. 5 ], 1);
sql($f2, q{INSERT INTO eph SELECT 'b' || g, 'x' FROM generate_series(1, 3) g;
           INSERT INTO pers VALUES ('q1', 'x')});
my $cl2 = start_client($f2, [qw(b1 b2 b3)], 0);
sql($f3, q{INSERT INTO eph SELECT 'c' || g, 'x' FROM generate_series(1, 3) g});
my $cl3 = start_client($f3, [qw(c1 c2 c3)], 0);
$eph{"a$_"} = 'f1' for 1 .. 5;
$eph{"b$_"} = 'f2' for 1 .. 3;
$eph{"c$_"} = 'f3' for 1 .. 3;
$pers{"p$_"} = 'f1' for 1 .. 3;
$pers{q1} = 'f2';

sql($f1, q{INSERT INTO fke SELECT 'r' || g, 'x' FROM generate_series(1, 5) g});
wait_converged(\@f, [ 'eph', 'pers', 'fke' ], 'the mesh converges with every client renewing');
sql($_, q{CREATE TABLE fkref (k text REFERENCES fke (k)); INSERT INTO fkref VALUES ('r2')})
  for $f2, $f3;
expect_rows(\@f, 'eph', \%eph, 'start');
expect_rows(\@f, 'pers', \%pers, 'start');

# ---------------------------------------------------------------------
# 1. the owner f1 dies
# ---------------------------------------------------------------------
my %lis = map { $_->name => start_listener($_) } $f2, $f3;
my %oe0 = map { $_->name => counters($_)->{owner_expired} } $f2, $f3;
my $a_old = sql($f1,
	q{SELECT string_agg(format('(%L, %s)', k, registry_version), ',') FROM eph WHERE registry_origin = 'f1'});
# (f1 dies well within a TTL of its client's last renewal)
stop_client($cl1);
$f1->stop('immediate');

ok( poll_until(sub {
		!grep { sql($_, q{SELECT count(*) FROM eph WHERE registry_origin = 'f1'}) ne '0' } $f2, $f3 }),
	'f2 and f3 expire the leased rows of the dead owner f1');
delete $eph{"a$_"} for 1 .. 5;
expect_rows([ $f2, $f3 ], 'eph', \%eph,
	'f1 down: its leased rows are gone, those of f2 and f3 (renewed) are there');
expect_rows([ $f2, $f3 ], 'pers', \%pers,
	'f1 down: the persistent table keeps f1\'s rows');

my %oe1 = map { $_->name => counters($_)->{owner_expired} } $f2, $f3;
my $oe = 0;
$oe += $oe1{$_} - $oe0{$_} for keys %oe0;
note("owner_expired: f2 +" . ($oe1{f2} - $oe0{f2}) . ", f3 +" . ($oe1{f3} - $oe0{f3}));
cmp_ok($oe, '>=', 5,
	'registry.node.owner_expired on f2 and f3 together counts (at least) the 5 rows');
# a row that cannot be deleted stops none of its owner's others
for my $n ($f2, $f3)
{
	ok( poll_until(sub { sql($n, q{SELECT string_agg(k, ',' ORDER BY k) FROM fke}) eq 'r2' }),
		'on ' . $n->name . ', f1\'s rows of fke expire but r2, which fkref refers to');
	ok( $n->log_contains(
			qr/registry: could not expire the row at \(\d+,\d+\) of timed-out owner "f1" in public\.fke: .*fkref/),
		'... r2\'s failure is logged on ' . $n->name);
}
for my $n ($f2, $f3)
{
	is( sql($n,
			q{SELECT coalesce(bool_and(c.committed_at >= s.last_success + interval '3s'), true)
			  FROM registry.change_log c, registry.peer_status s
			  WHERE s.peer = 'f1' AND c.table_name = 'public.eph' AND c.op = 'delete' AND c.reason = 'expired'}),
		't',
		'on ' . $n->name . ', no row of f1 expired before owner_timeout after the last contact with f1');
}
# the expiry deletes of eph's rows each node made (owner_expired also
# counts fke's)
my $oe_eph = 0;
$oe_eph += sql($_,
	q{SELECT count(*) FROM registry.change_log WHERE table_name = 'public.eph' AND op = 'delete' AND reason = 'expired' AND key LIKE 'a%'}
) for $f2, $f3;
my @owner_notes;
ok( poll_until(sub {
		@owner_notes = ();
		for my $l (values %lis)
		{
			pump_listener($l);
			push @owner_notes, grep {
				($_->{table} // '') eq 'public.eph'
				  && ($_->{op} // '') eq 'delete'
				  && ($_->{key} // '') =~ /^a\d$/
				  && exists $_->{reason}
			} @{ $l->{notes} };
		}
		return scalar(@owner_notes) >= $oe_eph;
	}),
	'f2 and f3 notified their expiry deletes of f1\'s rows');
is(scalar(@owner_notes), $oe_eph, 'one notification with a reason per row they expired');
is( join(',', sort map { ($_->{reason} // '') . '/' . ($_->{expiry} // '') } @owner_notes),
	join(',', ('expired/owner') x $oe_eph),
	'each says "reason": "expired", "expiry": "owner"');
$_->{s}->quit for values %lis;

wait_converged([ $f2, $f3 ], [ 'eph', 'pers' ], 'f2 and f3 converge while f1 is down');
my %tomb;
for my $n ($f2, $f3)
{
	is( sql($n,
			q{SELECT count(*) FILTER (WHERE deleted AND origin IN ('f2', 'f3')) || '/' || count(*) FROM registry.versions('eph') WHERE key LIKE 'a%'}),
		'5/5', 'f1\'s five rows are tombstones of f2 or f3 on ' . $n->name);
}
%tomb = split /[|\n]/,
  sql($f2, q{SELECT key, version FROM registry.versions('eph') WHERE key LIKE 'a%'});
check_verify([ $f2, $f3 ], 'f1 down');

# ---------------------------------------------------------------------
# 2. f1 comes back and its clients renew: the rows return from the stash
# ---------------------------------------------------------------------
$f1->start;
wait_ready($f1);
$cl1 = start_client($f1, [ map { "a$_" } 1 .. 5 ], 1);
$eph{"a$_"} = 'f1' for 1 .. 5;
my $tomb_values = join(',', map { "('$_', $tomb{$_})" } sort keys %tomb);
ok( poll_until(sub { !grep { back_above($_, $a_old, $tomb_values) ne '5' } @f }),
	'f1\'s rows are back on every node, written by f1 above their old versions and tombstones');
wait_converged(\@f, [ 'eph', 'pers' ], 'the mesh converges after f1 returns');
expect_rows(\@f, 'eph', \%eph, 'f1 back');
expect_rows(\@f, 'pers', \%pers, 'f1 back');
my $rereg = counters($f1)->{lease_reregistrations};
my $reinserted = sql($f1, q{SELECT count(*) FROM client_events WHERE what = 'reinserted'});
note("f1: lease_reregistrations $rereg, keys re-INSERTed by the client $reinserted");
cmp_ok($rereg, '>', 0,
	'renew() on f1 wrote (some of) its rows again from the stash (lease_reregistrations)');
is(sql($f1, q{SELECT count(*) FROM registry.lease_stash WHERE key LIKE 'a%'}), '0',
	'nothing of them is left in f1\'s stash');
is( sql($f1,
		q{SELECT count(*) || ':' || count(*) FILTER (WHERE deadline > now()) FROM registry.leases WHERE table_name = 'public.eph'}),
	'5:5', 'f1 leases its five rows again');
check_verify(\@f, 'f1 back');

# ---------------------------------------------------------------------
# 3. partition: f1 alone against f2 and f3
# ---------------------------------------------------------------------
my %c0 = map { $_->name => counters($_) } @f;
my $seq0_f1 = sql($f1, 'SELECT last_seq FROM registry.node');

# Every node keeps its peers but reaches them at a port nobody listens
# on.  f1 loses f2, then f3 a quarter of a second later: links do not fail
# at one instant, and a node's last successful polls of two peers differ
# by up to registry.sync_interval anyway; f1 must not take the peer it lost
# first for a dead owner while the other one is still within
# owner_timeout: it is the one cut off.
my $nowhere = 'host=' . $f1->host . ' port=' . PostgreSQL::Test::Cluster::get_free_port() . ' dbname=postgres';
repoint($f1, 'f2', $nowhere);
usleep(250_000);
repoint($f1, 'f3', $nowhere);
repoint($f2, 'f1', $nowhere);
repoint($f3, 'f1', $nowhere);
for my $n (@f)
{
	my $which = $n == $f1 ? '' : q{ WHERE peer = 'f1'};
	ok( poll_until(sub {
			sql($n,
				"SELECT bool_and(state NOT IN ('streaming', 'anti-entropy') AND errors > 0) FROM registry.peer_status$which"
			) eq 't' }),
		'the partition is in effect on ' . $n->name);
}

# From now on f1's clients renew a1..a3 (a4, a5 are left to expire), f2's
# b1, b2 (not b3) and f3's c1, c2 (not c3): f1 cannot learn that b3 and c3
# expire.
stop_client($cl1);
$cl1 = start_client($f1, [qw(a1 a2 a3)], 1);
stop_client($cl2);
$cl2 = start_client($f2, [qw(b1 b2)], 0);
stop_client($cl3);
$cl3 = start_client($f3, [qw(c1 c2)], 0);

delete $eph{$_} for qw(a1 a2 a3 a4 a5 b3 c3);
ok( poll_until(sub {
		!grep { sql($_, q{SELECT count(*) FROM eph WHERE k IN ('a1', 'a2', 'a3', 'a4', 'a5', 'b3', 'c3')}) ne '0' } $f2, $f3 }),
	'the majority expires f1\'s rows (owner timed out) and b3, c3 (not renewed)');
expect_rows([ $f2, $f3 ], 'eph', \%eph, 'partition, majority side');
expect_rows([ $f2, $f3 ], 'pers', \%pers, 'partition, majority side');
my %ptomb = split /[|\n]/,
  sql($f2, q{SELECT key, version FROM registry.versions('eph') WHERE deleted AND key IN ('a1', 'a2', 'a3')});
is(join(',', sort keys %ptomb), 'a1,a2,a3', 'f2 holds tombstones of a1..a3');

ok( poll_until(sub {
		my $c = counters($f1);
		$c->{expiry_minority} && $c->{expiry_held_minority} > $c0{f1}{expiry_held_minority} }),
	'f1 knows it is in the minority and holds back the expiry of the owners it lost');
my $cf1 = counters($f1);
ok($cf1->{expiry_minority}, 'registry.node.expiry_minority is true on f1');
cmp_ok($cf1->{expiry_held_minority}, '>', 0, 'registry.node.expiry_held_minority > 0 on f1');
is($cf1->{owner_expired} - $c0{f1}{owner_expired}, 0, 'f1 expired no row of another owner');
is( sql($f1,
		q{SELECT string_agg(k || '|' || registry_origin, ',' ORDER BY k) FROM eph WHERE k NOT IN ('a4', 'a5')}),
	'a1|f1,a2|f1,a3|f1,b1|f2,b2|f2,b3|f2,c1|f3,c2|f3,c3|f3',
	'f1 still has every row of f2 and f3, b3 and c3 included, and a1..a3');
is( sql($f1,
		qq{SELECT count(*) FROM registry.change_log WHERE seq > $seq0_f1 AND op = 'delete' AND key !~ '^a'}),
	'0', 'f1 deleted nothing of f2\'s or f3\'s during the partition');
for my $n ($f2, $f3)
{
	ok(!counters($n)->{expiry_minority}, $n->name . ' is not in the minority');
}

# heal
repoint($f1, 'f2', $f2->connstr('postgres'));
repoint($f1, 'f3', $f3->connstr('postgres'));
repoint($f2, 'f1', $f1->connstr('postgres'));
repoint($f3, 'f1', $f1->connstr('postgres'));
$eph{$_} = 'f1' for qw(a1 a2 a3);
my $ptomb_values = join(',', map { "('$_', $ptomb{$_})" } sort keys %ptomb);
ok( poll_until(sub { !grep { back_above($_, $a_old, $ptomb_values) ne '3' } @f }),
	'healed: a1..a3, renewed on f1 throughout, are back everywhere as new writes of f1');
wait_converged(\@f, [ 'eph', 'pers' ], 'the mesh converges after the partition heals');
expect_rows(\@f, 'eph', \%eph, 'healed');
expect_rows(\@f, 'pers', \%pers, 'healed');
cmp_ok(counters($f1)->{lease_reregistrations}, '>', $c0{f1}{lease_reregistrations},
	'f1 wrote rows again from the stash after the heal');
ok(poll_until(sub { !counters($f1)->{expiry_minority} }),
	'f1 is no longer in the minority');
for my $n ($f2, $f3)
{
	is(sql($n, q{SELECT count(*) FROM client_events WHERE what = 'missing'}), '0',
		'the clients on ' . $n->name . ' never found a key of theirs missing');
}
check_verify(\@f, 'healed');
stop_client($_) for $cl1, $cl2, $cl3;
$_->stop for @f;

# ---------------------------------------------------------------------
# 4. a line la - lb - lc
# ---------------------------------------------------------------------
# Only direct peers judge an owner's liveness: a node knows when it last
# heard from the nodes it pulls from, and nothing about nodes further
# away.  lb pulls from la and lc; lc pulls from lb only.  When la dies,
# lb (which still reaches lc: a majority of la, lb, lc) expires la's rows
# after owner_timeout; lc never judges la, and receives lb's deletes like
# any other delete.
my @l = map { new_node($_, conf => $conf) } qw(la lb lc);
my ($la, $lb, $lc) = @l;
setup_tables(\@l);
add_peer($la, $lb);
add_peer($lb, $la);
add_peer($lb, $lc);
add_peer($lc, $lb);
my (%leph, %lpers);
sql($la, q{INSERT INTO eph SELECT 'e' || g, 'x' FROM generate_series(1, 3) g;
           INSERT INTO pers VALUES ('lp1', 'x')});
my $cla = start_client($la, [qw(e1 e2 e3)], 1);
sql($lb, q{INSERT INTO eph VALUES ('g1', 'x')});
my $clb = start_client($lb, ['g1'], 0);
sql($lc, q{INSERT INTO eph VALUES ('h1', 'x')});
my $clc = start_client($lc, ['h1'], 0);
%leph = (e1 => 'la', e2 => 'la', e3 => 'la', g1 => 'lb', h1 => 'lc');
%lpers = (lp1 => 'la');
wait_converged(\@l, [ 'eph', 'pers' ], 'the line converges');
expect_rows(\@l, 'eph', \%leph, 'line');
expect_rows(\@l, 'pers', \%lpers, 'line');

my %loe0 = map { $_->name => counters($_)->{owner_expired} } $lb, $lc;
stop_client($cla);
$la->stop('immediate');
ok( poll_until(sub {
		!grep { sql($_, q{SELECT count(*) FROM eph WHERE registry_origin = 'la'}) ne '0' } $lb, $lc }),
	'la\'s leased rows disappear from lb and from lc');
delete $leph{$_} for qw(e1 e2 e3);
expect_rows([ $lb, $lc ], 'eph', \%leph, 'la down');
expect_rows([ $lb, $lc ], 'pers', \%lpers, 'la down');
is(counters($lb)->{owner_expired} - $loe0{lb}, 3, 'lb, la\'s direct peer, expired the three rows');
is(counters($lc)->{owner_expired} - $loe0{lc}, 0, 'lc, not a peer of la, expired nothing');
for my $k (qw(e1 e2 e3))
{
	is(log_of($lb, 'eph', $k), 'insert||la,delete|expired|lb',
		"lb's change log: $k deleted by lb with reason expired");
}
wait_converged([ $lb, $lc ], [ 'eph', 'pers' ], 'lb and lc converge while la is down');
is( sql($lc,
		q{SELECT string_agg(key || ':' || origin || ':' || deleted, ',' ORDER BY key) FROM registry.versions('eph') WHERE key LIKE 'e%'}),
	'e1:lb:true,e2:lb:true,e3:lb:true', 'on lc, la\'s rows are tombstones of lb');
for my $k (qw(e1 e2 e3))
{
	is(log_of($lc, 'eph', $k), 'insert||la,delete||lb',
		"lc's change log: $k deleted by lb, an ordinary delete");
}
check_verify([ $lb, $lc ], 'la down');

# la comes back with no client: its rows stay gone everywhere
$la->start;
wait_ready($la);
wait_converged(\@l, [ 'eph', 'pers' ], 'the line converges after la returns');
expect_rows(\@l, 'eph', \%leph, 'la back without clients');
expect_rows(\@l, 'pers', \%lpers, 'la back without clients');
check_verify(\@l, 'la back');
stop_client($_) for $clb, $clc;
is(sql($lb, q{SELECT count(*) FROM client_events WHERE what = 'missing'}), '0',
	'lb\'s client never found g1 missing');
is(sql($lc, q{SELECT count(*) FROM client_events WHERE what = 'missing'}), '0',
	'lc\'s client never found h1 missing');

$_->stop for @l;
done_testing();

# ---------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------

# eph (leased, TTL 2 s) and pers (persistent) on every node, and the
# client: a procedure renewing its keys every 0.3 s, each renewal in its
# own transaction, until cancelled.  Keys renew() returns are re-INSERTed
# (reinsert) or only noted (not reinsert), in client_events, which is a
# local table.
sub setup_tables
{
	my ($nodes) = @_;
	create_table($nodes, 'eph', 'CREATE TABLE eph (k text PRIMARY KEY, v text)');
	create_table($nodes, 'pers', 'CREATE TABLE pers (k text PRIMARY KEY, v text)');
	for my $n (@$nodes)
	{
		sql($n, q{
SELECT registry.set_lease('eph', '2s');
CREATE TABLE client_events (at timestamptz NOT NULL DEFAULT clock_timestamp(),
                            pid int NOT NULL DEFAULT pg_backend_pid(),
                            key text NOT NULL, what text NOT NULL);
CREATE TABLE client_rounds (pid int PRIMARY KEY, n bigint NOT NULL);
CREATE PROCEDURE lease_client(keys text[], reinsert boolean)
LANGUAGE plpgsql AS $$
DECLARE
    missing text[];
    k text;
BEGIN
    LOOP
        missing := registry.renew('eph', keys);
        FOREACH k IN ARRAY coalesce(missing, '{}') LOOP
            IF reinsert THEN
                INSERT INTO eph VALUES (k, 'client') ON CONFLICT (k) DO NOTHING;
                INSERT INTO client_events (key, what) VALUES (k, 'reinserted');
            ELSE
                INSERT INTO client_events (key, what) VALUES (k, 'missing');
            END IF;
        END LOOP;
        INSERT INTO client_rounds VALUES (pg_backend_pid(), 1)
            ON CONFLICT (pid) DO UPDATE SET n = client_rounds.n + 1;
        COMMIT;
        PERFORM pg_sleep(0.3);
    END LOOP;
END $$;
});
	}
}

# A client session on $node renewing @$keys; returns once it has renewed.
sub start_client
{
	my ($node, $keys, $reinsert) = @_;
	my $s = $node->background_psql('postgres', on_error_stop => 0, timeout => 3600);
	my $pid = $s->query_safe('SELECT pg_backend_pid()');
	my $arr = 'ARRAY[' . join(',', map { quote_literal($_) } @$keys) . ']::text[]';
	$s->query_until(qr/client started/,
		"\\echo client started\nCALL lease_client($arr, " . ($reinsert ? 'true' : 'false') . ");\n");
	poll_until(sub { sql($node, "SELECT count(*) FROM client_rounds WHERE pid = $pid AND n > 0") eq '1' })
	  or die 'the client on ' . $node->name . ' did not start renewing';
	return { node => $node, s => $s, pid => $pid, keys => $keys };
}

# Stop a client (it must still be running: a client whose renew() failed
# would have stopped by itself).
sub stop_client
{
	my ($c) = @_;
	my $desc = 'client of ' . join(',', @{ $c->{keys} }) . ' on ' . $c->{node}->name;
	is( sql($c->{node},
			"SELECT state || ':' || (query LIKE 'CALL lease_client%') FROM pg_stat_activity WHERE pid = $c->{pid}"),
		'active:true', "$desc was still renewing");
	sql($c->{node}, "SELECT pg_cancel_backend($c->{pid})");
	$c->{s}->quit;
}

# Point $node's peer $peer at $conninfo, keeping it a configured peer.
sub repoint
{
	my ($node, $peer, $conninfo) = @_;
	sql($node,
		"SELECT registry.remove_peer('$peer'); SELECT registry.add_peer('$peer', "
		  . quote_literal($conninfo) . ')');
}

# How many of the keys in $above (a VALUES list of (key, version)) have a
# row written by f1 with a version above that one and above the one listed
# in $old.
sub back_above
{
	my ($node, $old, $above) = @_;
	return sql($node, qq{
SELECT count(*) FROM eph e
JOIN (VALUES $above) t(k, v) USING (k)
JOIN (VALUES $old) o(k, v) USING (k)
WHERE e.registry_origin = 'f1' AND e.registry_version > t.v AND e.registry_version > o.v});
}

sub start_listener
{
	my ($node) = @_;
	my $s = $node->background_psql('postgres');
	$s->set_query_timer_restart;
	$s->query_safe('LISTEN registry_change');
	return { s => $s, notes => [] };
}

sub pump_listener
{
	my ($l) = @_;
	push @{ $l->{notes} }, read_notifications($l->{s});
}
