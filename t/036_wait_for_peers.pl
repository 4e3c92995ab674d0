# registry.wait_for_peers() (issue 15, part 4) on three real nodes in a
# full mesh: after a commit, it returns how many peers have applied the
# session's last change -- and those peers then hold the row, checked at
# once, without polling.  With one peer stopped it waits until its
# timeout and returns fewer; asked for fewer peers than there are, it
# returns as soon as those have the change.  A session that wrote nothing
# has nothing to wait for.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use RegistryMesh;

my @nodes = map { new_node($_) } qw(wa wb wc);
my ($wa, $wb, $wc) = @nodes;
create_table(\@nodes, 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
full_mesh(@nodes);
wait_converged(\@nodes, ['kv'], 'the empty mesh converges');

# Insert on $node and call wait_for_peers in the same session, as two
# statements (two transactions); returns (result, seconds it took).
sub insert_and_wait
{
	my ($node, $ids, $args) = @_;
	my $values = join(', ', map { "($_, 'v$_')" } split /,/, $ids);
	my $out = $node->safe_psql('postgres', qq{
INSERT INTO kv VALUES $values;
SELECT extract(epoch FROM clock_timestamp()) || ' ' || registry.wait_for_peers($args) || ' ' || extract(epoch FROM clock_timestamp());
});
	my ($t0, $n, $t1) = split / /, $out;
	return ($n, $t1 - $t0);
}

# the peers follow each other's change logs (acks need a position first)
ok( poll_until(sub {
			sql($wa, q{SELECT count(*) FROM registry.peer_status WHERE state = 'streaming'}) eq '2'
		}),
	'wa follows both peers');

# 1. all peers up: both, and both hold the row when it returns
my ($n, $secs) = insert_and_wait($wa, 1, "NULL, '30 s'");
is($n, '2', 'all peers up: wait_for_peers() returns 2');
cmp_ok($secs, '<', 10, "... well before its timeout (${secs}s)");
is(sql($wb, 'SELECT val FROM kv WHERE id = 1'), 'v1', '... and wb has the row when it returns');
is(sql($wc, 'SELECT val FROM kv WHERE id = 1'), 'v1', '... and wc has the row when it returns');

# from another node too, a batch of changes: the last one counts
($n) = insert_and_wait($wb, '2,3,4', "NULL, '30 s'");
is($n, '2', 'a multi-row insert on wb: 2');
is(sql($_, 'SELECT string_agg(id::text, \',\' ORDER BY id) FROM kv'), '1,2,3,4',
	'... ' . $_->name . ' holds all four rows at once')
  for ($wa, $wc);

# names that are not peers' do not take the peers' places: a caller that
# may serve (a superuser here) naming 100 other nodes in changes_since
# (the peers' acknowledgements of the change are in before the 100
# requests, and the peers, idle, send no new one until the next change)
my $acks = $wa->safe_psql('postgres', q{
INSERT INTO kv VALUES (8, 'v8');
SELECT registry.wait_for_peers(NULL, '30 s');
SELECT count(registry.changes_since(0, 1, false, (SELECT epoch FROM registry.node), 'junk' || g, 0)) FROM generate_series(1, 100) g;
SELECT registry.wait_for_peers(NULL, '3 s');
});
is($acks, "2\n100\n2", 'after 100 requests naming other nodes, the peers still have the change: 2');

# a session that wrote nothing returns the number of peers at once
is(sql($wc, q{SELECT registry.wait_for_peers(NULL, '0')}), '2',
	'a session without changes: the number of peers');

# 2. one peer down: the timeout, and fewer
$wc->stop('immediate');
($n, $secs) = insert_and_wait($wa, 5, "NULL, '2 s'");
is($n, '1', 'wc stopped: wait_for_peers() returns 1');
cmp_ok($secs, '>=', 1.9, "... after its timeout of 2 s (${secs}s)");
cmp_ok($secs, '<', 30, '... and does not hang');
is(sql($wb, 'SELECT val FROM kv WHERE id = 5'), 'v5', '... wb has the row');

($n, $secs) = insert_and_wait($wa, 6, "1, '30 s'");
is($n, '1', 'asked for one peer: 1');
cmp_ok($secs, '<', 10, "... returned without waiting for the stopped one (${secs}s)");

# 3. the stopped peer comes back and catches up: both again
$wc->start;
wait_converged(\@nodes, ['kv'], 'wc catches up after its restart');
ok( poll_until(sub {
			sql($wa, q{SELECT count(*) FROM registry.peer_status WHERE state = 'streaming'}) eq '2'
			  && sql($wc, q{SELECT count(*) FROM registry.peer_status WHERE state = 'streaming'}) eq '2'
		}),
	'the mesh streams again');
($n) = insert_and_wait($wa, 7, "NULL, '30 s'");
is($n, '2', 'wc back: 2');
is(sql($wc, 'SELECT val FROM kv WHERE id = 7'), 'v7', '... and wc has the row when it returns');

check_verify(\@nodes, 'at the end');
$_->stop for @nodes;
done_testing();
