# A new, empty node joins a two-node mesh whose table holds 100000 rows
# (and some tombstones): it catches up with every row and tombstone,
# pulling the table whole from one peer only (issue 16).
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $ddl = 'CREATE TABLE big (id int PRIMARY KEY, val text, n numeric)';
my ($na, $nb) = map { new_node($_) } qw(join_a join_b);
create_table([ $na, $nb ], 'big', $ddl);
full_mesh($na, $nb);

sql($na,
	q{INSERT INTO big SELECT g, md5(g::text), g / 7.0 FROM generate_series(1, 100100) g});
sql($na, q{DELETE FROM big WHERE id > 100000});
# some rows written on join_b too
sql($nb, q{INSERT INTO big SELECT g, 'b', NULL FROM generate_series(200001, 200010) g});
sql($nb, q{DELETE FROM big WHERE id BETWEEN 200001 AND 200010});
wait_converged([ $na, $nb ], ['big'], 'join_a and join_b converge on 100000 rows');
sql($nb, q{UPDATE big SET val = 'b-upd' WHERE id <= 100});
wait_converged([ $na, $nb ], ['big'], 'join_a and join_b converge after updates on join_b');
is(sql($nb, 'SELECT count(*) FROM big'), '100000', 'join_b has 100000 rows');

# the new node: table created and registered, no rows
my $nc = new_node('join_c');
create_table([$nc], 'big', $ddl);
is(sql($nc, 'SELECT count(*) FROM big'), '0', 'join_c starts empty');
add_peer($nc, $na);
add_peer($nc, $nb);
add_peer($na, $nc);
add_peer($nb, $nc);

my @nodes = ($na, $nb, $nc);
wait_converged(\@nodes, ['big'], 'join_c catches up with the mesh');
my $want = sql($na, q{SELECT 100000, 100, sum(g), sum(g / 7.0) FROM generate_series(1, 100000) g});
for my $n (@nodes)
{
	is( sql($n, q{SELECT count(*), count(*) FILTER (WHERE val = 'b-upd' AND registry_origin = 'join_b'),
	                     sum(id), sum(n) FROM big}),
		$want,
		'big on ' . $n->name . ' has the 100000 rows with their values');
	is( sql($n,
			q{SELECT count(*) FROM registry.versions('big') WHERE deleted}),
		'110', 'big on ' . $n->name . ' has the 110 tombstones');
}
is(table_rows($nc, 'big') eq table_rows($na, 'big') ? 'same' : 'different',
	'same', 'join_c\'s rows (values, versions, origins) equal join_a\'s');
my ($pulled, $applied) = split /\|/,
  sql($nc, 'SELECT sum(rows_pulled), sum(rows_applied) FROM registry.peer_status');
cmp_ok($applied, '>=', 100000, "join_c applied at least 100000 rows ($applied; pulled $pulled)");
# both peers are far ahead at once: the table is pulled whole from one of
# them, and the other's round waits for that pull and then compares
cmp_ok($pulled, '<', 150000,
	"join_c pulled the table from one peer, not from both ($pulled rows pulled)");
cmp_ok($applied, '<', 150000, "... and applied it once ($applied rows applied)");
check_verify(\@nodes, 'after the join');

$_->stop for @nodes;
done_testing();
