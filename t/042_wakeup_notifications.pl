# What one change costs the session that serves a peer's long poll, with
# notifications on (the default).
#
# A session on wn_a LISTENs registry_change, so that its notifier sends
# a NOTIFY for every commit here.
#
# The sync worker does not LISTEN registry_wakeup on its peer
# connections: the long poll brings each change as soon as the peer
# publishes it, and every NOTIFY on the peer (its notifier sends one per
# batch of commits) signalled each listening session there, which then
# passed the notification on and woke the puller too, for nothing.
#
# wn_a makes 100 single-row commits, 20 ms apart, each of which reaches
# wn_b through its long poll at wn_a.  Counted: the voluntary context
# switches of wn_a's backend serving wn_b's requests (Linux /proc), and
# the change-log answers wn_b handled from wn_a
# (registry.peer_status.fast_batches).  Per commit that backend sleeps
# two or three times: after sending the answer, after the Sync's
# ReadyForQuery, and after starting the next wait (the Sync and the next
# poll often arrive together).  With the LISTEN it also woke for each
# NOTIFY: 3.4-4 switches per commit.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

plan skip_all => 'counts context switches in /proc' unless -r "/proc/self/status";

my $na = new_node('wn_a', conf => "registry.antientropy_interval = '1h'\n");
my $nb = new_node('wn_b', conf => "registry.antientropy_interval = '1h'\n");
create_table([ $na, $nb ], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
add_peer($nb, $na);
sql($na, q{INSERT INTO kv VALUES (1, 'start')});
ok(poll_until(sub { sql($nb, q{SELECT val FROM kv WHERE id = 1}) eq 'start' }),
	'the first change arrives');
# notifications are sent only while somebody listens (t/044): a listener,
# so that each commit below really sends its NOTIFY on wn_a
my $listener = $na->background_psql('postgres');
$listener->query_safe('LISTEN registry_change');
sql($na, q{UPDATE kv SET val = 'listened' WHERE id = 1});
ok(poll_until(sub { sql($nb, q{SELECT val FROM kv WHERE id = 1}) eq 'listened' }),
	'the change after the LISTEN arrives');
# the notification of that commit has come and gone
ok(poll_until(sub { sql($na, q{SELECT notified_seq = last_seq FROM registry.node}) eq 't' }),
	"wn_a's notifier has caught up");

my $pid = serving_pid($na, 'wn_b');
ok($pid =~ /^\d+$/, "wn_a's backend serving wn_b's requests ($pid)");


sleep(1);
my $answers0 = peer_status($nb, 'wn_a', 'fast_batches');
my $switches0 = voluntary_switches($pid);
spaced_commits($na, 100, 0.02);
ok(poll_until(sub { sql($nb, q{SELECT val FROM kv WHERE id = 1}) eq 'v100' }),
	'the 100 changes arrive');
my $switches = voluntary_switches($pid) - $switches0;
my $answers = peer_status($nb, 'wn_a', 'fast_batches') - $answers0;
note("wn_b handled $answers change-log answers from wn_a for 100 commits; "
	  . "the serving backend slept $switches times");
ok($answers >= 100, "at least one answer per commit ($answers)");
ok($answers < 140, "no second answer per commit ($answers)");
ok($switches < 290,
	"the serving backend sleeps fewer than 2.9 times per commit ($switches for 100)");
is(sql($na, q{SELECT count(*) FROM pg_stat_activity
  WHERE application_name = 'registry sync wn_b' AND backend_type = 'client backend'}),
	'1', 'still the same one session serving wn_b');
is(sql($na, qq{SELECT count(*) FROM pg_stat_activity WHERE pid = $pid}), '1',
	'the counted backend is still that session');
my $notified = 0;
poll_until(
	sub {
		my $out = $listener->query_safe('SELECT 1');
		$notified += () = $out =~ /^Asynchronous notification "registry_change"/mg;
		return $notified >= 101;
	});
is($notified, 101, 'the listener was notified of each of the 101 commits');
$listener->quit;
is(table_rows($na, 'kv'), table_rows($nb, 'kv'), 'both nodes hold the same rows');
$_->stop for ($na, $nb);
done_testing();
