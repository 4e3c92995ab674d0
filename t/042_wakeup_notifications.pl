# A registry_wakeup notification that says nothing new does not cost a
# request.  The sync worker LISTENs for registry_wakeup on each peer
# connection (a fallback to the long poll); the peer's notifier sends one
# after its commits, carrying its last seq.  The session passes it on only
# once idle, that is after the long poll has already answered with the
# change: asking again at once would get an empty answer.  A notification
# whose seq this node has already consumed is ignored.
#
# wk_a makes 100 single-row commits, 20 ms apart, each of which reaches
# wk_b through its long poll at wk_a; counted: the change-log answers wk_b
# handled from wk_a (registry.peer_status.fast_batches).  Without the
# check each commit costs two (the long poll's, then the one the
# notification asked for); with it, one, plus the long polls that end at
# their timeout.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $na = new_node('wn_a', conf => "registry.antientropy_interval = '1h'\n");
my $nb = new_node('wn_b', conf => "registry.antientropy_interval = '1h'\n");
create_table([ $na, $nb ], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
add_peer($nb, $na);
sql($na, q{INSERT INTO kv VALUES (1, 'start')});
ok(poll_until(sub { sql($nb, q{SELECT val FROM kv WHERE id = 1}) eq 'start' }),
	'the first change arrives');
# the notification of that first commit has come and gone
ok(poll_until(sub { sql($na, q{SELECT notified_seq = last_seq FROM registry.node}) eq 't' }),
	"wn_a's notifier has caught up");
sleep(1);

my $answers0 = peer_status($nb, 'wn_a', 'fast_batches');
spaced_commits($na, 100, 0.02);
ok(poll_until(sub { sql($nb, q{SELECT val FROM kv WHERE id = 1}) eq 'v100' }),
	'the 100 changes arrive');
my $answers = peer_status($nb, 'wn_a', 'fast_batches') - $answers0;
note("wn_b handled $answers change-log answers from wn_a for 100 commits");
ok($answers >= 100, "at least one answer per commit ($answers)");
ok($answers < 140, "no second answer per commit for its notification ($answers)");
is(table_rows($na, 'kv'), table_rows($nb, 'kv'), 'both nodes hold the same rows');

$_->stop for ($na, $nb);
done_testing();
