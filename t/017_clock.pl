# A node whose clock runs two hours ahead: rows it writes carry versions
# further ahead than registry.max_clock_skew, and its peer refuses them
# (counted and reported), without its own clock being dragged ahead, while
# replication otherwise goes on: the skewed node still receives the
# others' rows, and the peer still receives rows from a third node.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my @nodes = map { new_node($_) } qw(clk_a clk_b clk_c);
my ($na, $nb, $nc) = @nodes;
create_table(\@nodes, 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
full_mesh(@nodes);

sql($nb, q{INSERT INTO kv VALUES (1, 'b-before')});
sql($na, q{INSERT INTO kv VALUES (2, 'a-before')});
wait_converged(\@nodes, ['kv'], 'rows written before the clock step converge');

sql($nb, q{SELECT registry.set_clock_offset('2 hours')});
sql($nb, q{INSERT INTO kv VALUES (10, 'b-future')});
cmp_ok(
	sql($nb, q{SELECT registry.version_time(registry_version) - now() FROM kv WHERE id = 10}),
	'gt', '01:59:00', 'the row written on clk_b carries a version two hours ahead');

ok( $na->poll_query_until('postgres', q{
SELECT versions_refused > 0 AND last_error LIKE '%clock%'
FROM registry.peer_status WHERE peer = 'clk_b'}),
	'clk_a refuses clk_b\'s future row and says why');
my $err = peer_status($na, 'clk_b', 'last_error');
note("clk_a last_error for clk_b: $err");
like($err, qr/\bkv\b.*max_clock_skew/, 'the error names the table and registry.max_clock_skew');
is(sql($na, 'SELECT count(*) FROM kv WHERE id = 10'), '0', 'the future row is not on clk_a');
cmp_ok(sql($na, q{SELECT versions_refused FROM registry.node}),
	'>', 0, 'registry.node on clk_a counts the refused versions');
is( sql($na, q{SELECT registry.version_time(registry.hlc_now()) < now() + interval '1 minute'}),
	't', 'clk_a\'s clock was not dragged ahead by the refused row');

# the clock goes back; clk_b's clock does not (it never runs backwards),
# so its new rows still carry future versions
sql($nb, q{SELECT registry.set_clock_offset('0')});
sql($nb, q{INSERT INTO kv VALUES (11, 'b-future-2')});
cmp_ok(
	sql($nb, q{SELECT registry.version_time(registry_version) - now() FROM kv WHERE id = 11}),
	'gt', '01:59:00', 'clk_b\'s next row still carries a version two hours ahead');

# replication otherwise goes on
sql($na, q{INSERT INTO kv VALUES (20, 'a-after')});
sql($nc, q{INSERT INTO kv VALUES (30, 'c-after')});
ok( $nb->poll_query_until('postgres', q{SELECT count(*) = 2 FROM kv WHERE id IN (20, 30)}),
	'clk_b still receives rows from clk_a and clk_c');
ok( $na->poll_query_until('postgres', q{SELECT count(*) = 1 FROM kv WHERE id = 30}),
	'clk_a still receives rows from clk_c');
# several complete rounds everywhere
for my $i (1 .. 3)
{
	sql($_, 'SELECT registry.sync_now()') for @nodes;
}
my $refused = peer_status($na, 'clk_b', 'versions_refused');
sql($na, q{SELECT registry.sync_now('clk_b')});
cmp_ok(peer_status($na, 'clk_b', 'versions_refused'), '>', $refused,
	'clk_a refuses the future rows again in every round');

# sync_now() is true only if this node then has everything the peer had
is(sql($na, q{SELECT registry.sync_now('clk_b')}), 'f',
	'sync_now with clk_b is false on clk_a (it refused rows clk_b has)');

is( sql($na, 'SELECT id, val, registry_origin FROM kv ORDER BY id'),
	"1|b-before|clk_b\n2|a-before|clk_a\n20|a-after|clk_a\n30|c-after|clk_c",
	'clk_a has every row but the two future ones');
is( sql($nb, 'SELECT id, val, registry_origin FROM kv ORDER BY id'),
	"1|b-before|clk_b\n2|a-before|clk_a\n10|b-future|clk_b\n11|b-future-2|clk_b\n20|a-after|clk_a\n30|c-after|clk_c",
	'clk_b has every row, its future ones included');
for my $n ($na, $nc)
{
	is( sql($n, q{SELECT registry.version_time(registry.hlc_now()) < now() + interval '1 minute'}),
		't', $n->name . '\'s clock is still not ahead');
}
check_verify(\@nodes, 'clock skew');

$_->stop for @nodes;
done_testing();
