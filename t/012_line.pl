# A line: line_a <-> line_b <-> line_c.  line_a and line_c are not peers of
# each other; everything they write reaches the other end through line_b,
# with its original version and origin.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my @nodes = map { new_node($_) } qw(line_a line_b line_c);
my ($na, $nb, $nc) = @nodes;
create_table(\@nodes, 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
add_peer($na, $nb);
add_peer($nb, $na);
add_peer($nb, $nc);
add_peer($nc, $nb);

is(sql($na, 'SELECT string_agg(name, \',\') FROM registry.peers'), 'line_b',
	'line_a pulls from line_b only');
is(sql($nc, 'SELECT string_agg(name, \',\') FROM registry.peers'), 'line_b',
	'line_c pulls from line_b only');

my %kv;
sub expected { join("\n", map { "$_|$kv{$_}" } sort { $a <=> $b } keys %kv) }

sql($na, q{INSERT INTO kv SELECT g, 'from-a' FROM generate_series(1, 20) g});
$kv{$_} = 'from-a|line_a' for 1 .. 20;
sql($nc, q{INSERT INTO kv SELECT g, 'from-c' FROM generate_series(101, 120) g});
$kv{$_} = 'from-c|line_c' for 101 .. 120;

ok( $nc->poll_query_until('postgres',
		q{SELECT count(*) = 20 FROM kv WHERE registry_origin = 'line_a'}),
	'rows written on line_a reach line_c');
ok( $na->poll_query_until('postgres',
		q{SELECT count(*) = 20 FROM kv WHERE registry_origin = 'line_c'}),
	'rows written on line_c reach line_a');
wait_converged(\@nodes, ['kv'], 'the line converges after inserts at both ends');

# updates and deletes of the other end's rows, from both ends
sql($na, q{UPDATE kv SET val = 'a-upd' WHERE id BETWEEN 101 AND 105});
sql($na, q{DELETE FROM kv WHERE id BETWEEN 106 AND 108});
$kv{$_} = 'a-upd|line_a' for 101 .. 105;
delete $kv{$_} for 106 .. 108;
sql($nc, q{UPDATE kv SET val = 'c-upd' WHERE id BETWEEN 1 AND 5});
sql($nc, q{DELETE FROM kv WHERE id BETWEEN 6 AND 8});
$kv{$_} = 'c-upd|line_c' for 1 .. 5;
delete $kv{$_} for 6 .. 8;

ok( $nc->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM kv WHERE id BETWEEN 106 AND 108}),
	'deletes made on line_a reach line_c');
ok( $na->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM kv WHERE id BETWEEN 6 AND 8}),
	'deletes made on line_c reach line_a');
wait_converged(\@nodes, ['kv'],
	'the line converges after updates and deletes at both ends');
for my $n (@nodes)
{
	is(sql($n, 'SELECT id, val, registry_origin FROM kv ORDER BY id'),
		expected(), 'kv on ' . $n->name . ' has exactly the expected rows');
}
is( sql($na,
		q{SELECT string_agg(key || ':' || origin, ',' ORDER BY key::int) FROM registry.versions('kv') WHERE deleted}),
	'6:line_c,7:line_c,8:line_c,106:line_a,107:line_a,108:line_a',
	'line_a holds the tombstones of both ends with their origins');
is( sql($nc, q{SELECT string_agg(peer || '=' || coalesce(remote_node, '?'), ',') FROM registry.peer_status}),
	'line_b=line_b', 'line_c talks to line_b only, and line_b is who answers');
check_verify(\@nodes, 'line');

$_->stop for @nodes;
done_testing();
