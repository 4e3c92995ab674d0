# A peer that is down: its state and error show in registry.peer_status,
# the other nodes go on replicating between themselves, and when it comes
# back everything converges with nothing lost in either direction.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use RegistryMesh;

my @nodes = map { new_node($_) } qw(unr_a unr_b unr_c);
my ($na, $nb, $nc) = @nodes;
create_table(\@nodes, 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
full_mesh(@nodes);

my %kv;
sub expected { join("\n", map { "$_|$kv{$_}" } sort { $a <=> $b } keys %kv) }

sql($nc, q{INSERT INTO kv SELECT g, 'c' FROM generate_series(1, 30) g});
$kv{$_} = 'c|unr_c' for 1 .. 30;
wait_converged(\@nodes, ['kv'], 'initial rows converge');
is(peer_status($na, 'unr_c', 'remote_node'), 'unr_c',
	'unr_a knows unr_c by its node name');

$nc->stop('fast');
my $stopped_at = time();

ok( $na->poll_query_until('postgres', q{
SELECT state IN ('error', 'connecting', 'disconnected')
       AND last_error IS NOT NULL AND errors > 0
FROM registry.peer_status WHERE peer = 'unr_c'}),
	'unr_a reports unr_c as unreachable, with an error');
my ($state, $err) = split /\|/,
  peer_status($na, 'unr_c', 'state, last_error');
note("unr_a sees unr_c: state $state, last error: $err");
like($err, qr/connect|connection/i, 'the last error is about the connection');
is(sql($na, q{SELECT registry.sync_now('unr_c', '5s')}),
	'f', 'sync_now with the unreachable peer returns false');

# writes go on on unr_a and unr_b
sql($na, q{INSERT INTO kv SELECT g, 'a' FROM generate_series(101, 120) g});
sql($na, q{UPDATE kv SET val = 'a-upd' WHERE id BETWEEN 1 AND 5});
sql($nb, q{INSERT INTO kv SELECT g, 'b' FROM generate_series(201, 220) g});
sql($nb, q{DELETE FROM kv WHERE id BETWEEN 6 AND 10 OR id = 101});
$kv{$_} = 'a|unr_a' for 101 .. 120;
$kv{$_} = 'a-upd|unr_a' for 1 .. 5;
$kv{$_} = 'b|unr_b' for 201 .. 220;
delete $kv{$_} for 6 .. 10, 101;

wait_converged([ $na, $nb ], ['kv'], 'unr_a and unr_b converge while unr_c is down');
for my $n ($na, $nb)
{
	is(sql($n, 'SELECT id, val, registry_origin FROM kv ORDER BY id'),
		expected(), 'while unr_c is down, kv on ' . $n->name . ' is as expected');
}
ok( $na->poll_query_until('postgres', q{
SELECT state IN ('streaming', 'anti-entropy') FROM registry.peer_status WHERE peer = 'unr_b'}),
	'unr_a still streams from unr_b');

# Down for 35 s: the reconnect backoff (0.5 s, doubling) would have
# grown past 30 s by now; attempts are still at most 5 s apart, so unr_a
# is back within seconds of unr_c (15 s leaves room for a slow machine;
# with attempts at 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 and 63.5 s after the
# stop, it took 28 s).
my $down = 35 - (time() - $stopped_at);
sleep($down) if $down > 0;
my $conn0 = peer_status($na, 'unr_c', 'connects');
$nc->start;
my $started_at = time();
ok( poll_until(
		sub {
			peer_status($na, 'unr_c', 'connects') > $conn0;
		}),
	'unr_a reconnects to unr_c after its 35 s outage');
my $took = time() - $started_at;
cmp_ok($took, '<', 15, sprintf('... within 15 s of its start (%.1f s)', $took));
wait_ready($nc);
# unr_c writes at once, before it has caught up
sql($nc, q{INSERT INTO kv SELECT g, 'c-after' FROM generate_series(301, 310) g});
$kv{$_} = 'c-after|unr_c' for 301 .. 310;

wait_converged(\@nodes, ['kv'], 'all three converge after unr_c comes back');
for my $n (@nodes)
{
	is(sql($n, 'SELECT id, val, registry_origin FROM kv ORDER BY id'),
		expected(), 'kv on ' . $n->name . ' has every write, nothing lost');
}
ok( $na->poll_query_until('postgres', q{
SELECT state IN ('streaming', 'anti-entropy') AND connects >= 2
FROM registry.peer_status WHERE peer = 'unr_c'}),
	'unr_a reconnected to unr_c');
check_verify(\@nodes, 'after unr_c came back');

# a new connection string for a known peer: the worker reconnects with it,
# and the peer keeps its status (counters included)
my $connects = peer_status($na, 'unr_c', 'connects');
sql($na,
	    q{SELECT registry.add_peer('unr_c', }
	  . quote_literal($nc->connstr('postgres') . ' application_name=unr_c_again')
	  . ')');
ok( $nc->poll_query_until('postgres', q{
SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'unr_c_again'}),
	'unr_a connects to unr_c with the new connection string');
ok( $na->poll_query_until('postgres', qq{
SELECT state IN ('streaming', 'anti-entropy') AND connects > $connects
FROM registry.peer_status WHERE peer = 'unr_c'}),
	'the peer keeps its status row, counters carried over');
sql($nc, q{INSERT INTO kv VALUES (401, 'c-new-conn')});
$kv{401} = 'c-new-conn|unr_c';
wait_converged(\@nodes, ['kv'], 'converged after the connection string changed');
is(sql($na, 'SELECT id, val, registry_origin FROM kv ORDER BY id'),
	expected(), 'unr_a has unr_c\'s write made after the change');

$_->stop for @nodes;
done_testing();
