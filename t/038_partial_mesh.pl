# Who forwards what (issue 16): a node pulls from a peer only the changes
# whose origin it does not also follow directly (changes_since's
# skip_origins), so that a write reaches each node of a full mesh once,
# while a node that peers with only one other still gets everything
# through it.
#
# pa, pb, pc: a full mesh; pd peers with pc only (both ways).
#  1. 20 writes on pa reach pb, pc and pd; on the full mesh every node
#     applies each once and skips none (before skip_origins, pb and pc also
#     got each of them from each other and skipped it); pd, which follows
#     pa only through pc, gets all 20 from pc.
#  2. writes on pd reach pa and pb through pc.
#  3. pb drops pa as a peer: pa's next writes reach pb through pc.
#  4. every node converges to the same rows and versions, verify() clean.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

# no periodic anti-entropy: rows arrive by the change logs alone (a round
# racing the fast path would apply a row first and count the other copy
# as skipped); the rounds run when the test asks (sync_round)
my @nodes = map { new_node($_, conf => "registry.antientropy_interval = '1h'\n") } qw(pa pb pc pd);
my ($pa, $pb, $pc, $pd) = @nodes;
create_table(\@nodes, 'kv', 'CREATE TABLE kv (k int PRIMARY KEY, v text)');
full_mesh($pa, $pb, $pc);
add_peer($pc, $pd);
add_peer($pd, $pc);

# everybody follows its peers' change logs
sub all_streaming
{
	for my $n (@nodes)
	{
		my $want = $n == $pc ? 3 : ($n == $pd ? 1 : 2);
		return 0
		  unless sql($n,
			q{SELECT count(*) FROM registry.peer_status WHERE state IN ('streaming', 'anti-entropy') AND consumed_seq IS NOT NULL}
		  ) eq $want;
	}
	return 1;
}
ok(poll_until(\&all_streaming), 'every node follows its peers');
wait_converged(\@nodes, ['kv'], 'the empty tables converge');

sub counters
{
	my ($n) = @_;
	return split /\|/, sql($n,
		q{SELECT coalesce(sum(rows_applied), 0) || '|' || coalesce(sum(rows_skipped), 0) FROM registry.peer_status});
}
sub from_peer
{
	my ($n, $peer) = @_;
	return sql($n, "SELECT rows_applied FROM registry.peer_status WHERE peer = '$peer'");
}

# ---- 1. writes on pa ----
my %before = map { $_->name => [ counters($_) ] } @nodes;
my $pd_from_pc = from_peer($pd, 'pc');
for my $i (1 .. 20)
{
	sql($pa, "INSERT INTO kv VALUES ($i, 'a$i')");
}
ok( poll_until(sub {
			sql($pb, 'SELECT count(*) FROM kv') eq '20'
			  && sql($pc, 'SELECT count(*) FROM kv') eq '20'
			  && sql($pd, 'SELECT count(*) FROM kv') eq '20'
		}),
	'20 writes on pa reach pb, pc and pd');
# what arrives late through anti-entropy would show as skipped too: a
# round later, nothing has changed
RegistryMesh::sync_round(\@nodes);
for my $n ($pb, $pc)
{
	my ($applied, $skipped) = counters($n);
	is($applied - $before{ $n->name }[0], 20, $n->name . ' applied each of the 20 once');
	is($skipped - $before{ $n->name }[1], 0,
		$n->name . ' skipped none: nobody else forwarded pa\'s writes to it');
}
is(from_peer($pd, 'pc') - $pd_from_pc, 20, 'pd, which follows pa only through pc, got all 20 from pc');

# ---- 2. writes on pd reach the full mesh through pc ----
sql($pd, q{INSERT INTO kv SELECT g, 'd' || g FROM generate_series(101, 110) g});
ok( poll_until(sub {
			sql($pa, 'SELECT count(*) FROM kv WHERE k > 100') eq '10'
			  && sql($pb, 'SELECT count(*) FROM kv WHERE k > 100') eq '10'
		}),
	'10 writes on pd reach pa and pb through pc');

# ---- 3. pb drops pa: pa's writes reach pb through pc ----
sql($pb, q{SELECT registry.remove_peer('pa')});
ok( poll_until(sub {
			sql($pb, q{SELECT count(*) FROM registry.peer_status}) eq '1'
		}),
	'pb follows pc only');
sql($pa, q{INSERT INTO kv SELECT g, 'a' || g FROM generate_series(201, 210) g});
ok(poll_until(sub { sql($pb, 'SELECT count(*) FROM kv WHERE k > 200') eq '10' }),
	'pa\'s next 10 writes reach pb through pc');

# ---- 4. everyone agrees ----
wait_converged(\@nodes, ['kv'], 'all four converge');
is(sql($pd, 'SELECT count(*) || \'|\' || sum(k) FROM kv'), '40|3320', 'pd holds all 40 rows');
check_verify(\@nodes, 'at the end');
$_->stop for @nodes;
done_testing();
