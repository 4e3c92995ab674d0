# A node that crashes right after its own writes catches up when it comes
# back: the writes and deletes made on the other nodes meanwhile reach it,
# and its own pre-crash writes (durable, committed before the crash) reach
# the others.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my @nodes = map { new_node($_) } qw(crash_a crash_b crash_c);
my ($na, $nb, $nc) = @nodes;
create_table(\@nodes, 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
full_mesh(@nodes);

# expected contents: id => "val|origin"
my %kv;
sql($na, q{INSERT INTO kv SELECT g, 'init' FROM generate_series(1, 40) g});
$kv{$_} = 'init|crash_a' for 1 .. 40;

sub expected { join("\n", map { "$_|$kv{$_}" } sort { $a <=> $b } keys %kv) }

sub check_contents
{
	my ($label, @which) = @_;
	for my $n (@which)
	{
		is(sql($n, 'SELECT id, val, registry_origin FROM kv ORDER BY id'),
			expected(), "$label: kv on " . $n->name . ' has exactly the expected rows');
	}
}

wait_converged(\@nodes, ['kv'], 'initial rows converge on all three nodes');

# crash_c writes (inserts, updates, deletes) and crashes at once
my $epoch_before = sql($nc, 'SELECT epoch FROM registry.node');
sql($nc, q{
INSERT INTO kv SELECT g, 'c-pre-crash' FROM generate_series(301, 320) g;
UPDATE kv SET val = 'c-updated' WHERE id BETWEEN 1 AND 5;
DELETE FROM kv WHERE id BETWEEN 6 AND 8;
});
$kv{$_} = 'c-pre-crash|crash_c' for 301 .. 320;
$kv{$_} = 'c-updated|crash_c' for 1 .. 5;
delete $kv{$_} for 6 .. 8;
$nc->stop('immediate');

# meanwhile on crash_a and crash_b: inserts, updates, deletes
sql($na, q{
INSERT INTO kv SELECT g, 'a-while-down' FROM generate_series(101, 130) g;
DELETE FROM kv WHERE id BETWEEN 21 AND 25;
UPDATE kv SET val = 'a-upd' WHERE id BETWEEN 26 AND 30;
});
$kv{$_} = 'a-while-down|crash_a' for 101 .. 130;
delete $kv{$_} for 21 .. 25;
$kv{$_} = 'a-upd|crash_a' for 26 .. 30;
sql($nb, q{
INSERT INTO kv SELECT g, 'b-while-down' FROM generate_series(201, 230) g;
DELETE FROM kv WHERE id BETWEEN 31 AND 35 OR id IN (101, 102);
UPDATE kv SET val = 'b-upd' WHERE id BETWEEN 36 AND 40;
});
$kv{$_} = 'b-while-down|crash_b' for 201 .. 230;
delete $kv{$_} for 31 .. 35, 101, 102;
$kv{$_} = 'b-upd|crash_b' for 36 .. 40;

wait_converged([ $na, $nb ], ['kv'],
	'crash_a and crash_b converge while crash_c is down');

# back up
$nc->start;
wait_ready($nc);
isnt(sql($nc, 'SELECT epoch FROM registry.node'),
	$epoch_before, 'crash_c restarted with a new epoch');
is( sql($nc,
		q{SELECT count(*) FROM kv WHERE val = 'c-pre-crash' AND registry_origin = 'crash_c'}),
	'20', 'crash_c kept its 20 committed pre-crash inserts through the crash');

wait_converged(\@nodes, ['kv'], 'all three nodes converge after crash_c restarts');
check_contents('after the rejoin', @nodes);
is( sql($nc, q{SELECT count(*) FROM kv WHERE id BETWEEN 21 AND 25 OR id BETWEEN 31 AND 35 OR id IN (101, 102)}),
	'0', 'the deletes made while crash_c was down reached it');
for my $n ($na, $nb)
{
	is( sql($n,
			q{SELECT count(*) FROM kv WHERE registry_origin = 'crash_c'}),
		'25',
		'crash_c\'s pre-crash inserts and updates are on ' . $n->name);
	is( sql($n,
			q{SELECT string_agg(key, ',' ORDER BY key::int) FROM registry.versions('kv') WHERE deleted AND origin = 'crash_c'}),
		'6,7,8', 'crash_c\'s pre-crash deletes are tombstones on ' . $n->name);
}
check_verify(\@nodes, 'after the rejoin');

$_->stop for @nodes;
done_testing();
