# Which commits wake a held long poll.  A node's long poll at a peer
# excludes its own changes and those of the nodes it follows directly;
# the peer's commits of such changes (the ones it applied from them) do
# not wake it.  In a full mesh of N nodes every applied change would
# otherwise wake every other peer's long poll on every node: N - 1
# wake-ups per node per write, each finding nothing to send.
#
# Two nodes pulling from each other: wk_a writes 200 single-row
# transactions, which wk_b applies; wk_a's long poll held at wk_b
# excludes wk_a, so those commits must leave it asleep.  Counted: the
# voluntary context switches of wk_b's backend serving that long poll
# (Linux /proc), against the 200 applied commits.  It still wakes for its
# own timeout (at most once a second) and for wk_b's own writes, checked
# at the end.  wk_b's notifications are off, so that no registry_wakeup
# NOTIFY wakes the listening backend either.
#
# Then the other way: 200 commits on wk_b, which its backend serving
# wk_a's long poll sends on one by one; it must sleep about twice per
# change, not three times (the poll's Sync comes with the request).
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

plan skip_all => 'counts context switches in /proc' unless -r "/proc/self/status";

my $na = new_node('wk_a', conf => "registry.antientropy_interval = '1h'\n");
my $nb = new_node('wk_b',
	conf => "registry.notifications = off\nregistry.antientropy_interval = '1h'\n");
create_table([ $na, $nb ], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
full_mesh($na, $nb);
sql($na, q{INSERT INTO kv VALUES (1, 'start')});
ok(poll_until(sub { sql($nb, q{SELECT val FROM kv WHERE id = 1}) eq 'start' }),
	'the first change arrives');

my $pid = serving_pid($nb, 'wk_a');
ok($pid =~ /^\d+$/, "wk_b's backend serving wk_a's requests ($pid)");


my $applied0 = sql($nb, q{SELECT rows_applied FROM registry.peer_status WHERE peer = 'wk_a'});
my $before = voluntary_switches($pid);
spaced_commits($na, 200, 0.01);
ok(poll_until(sub { sql($nb, q{SELECT val FROM kv WHERE id = 1}) eq 'v200' }),
	'the 200 changes arrive');
my $applied = sql($nb, q{SELECT rows_applied FROM registry.peer_status WHERE peer = 'wk_a'})
  - $applied0;
my $woken = voluntary_switches($pid) - $before;
note("wk_b applied $applied rows; wk_a's long poll there was woken $woken times");
ok($applied >= 100, "wk_b applied the changes in many transactions ($applied rows)");
ok($woken < 60, "wk_a's long poll at wk_b slept through them ($woken wake-ups)");

# wk_b's own changes still wake it at once
sql($nb, q{INSERT INTO kv VALUES (2, 'from b')});
ok(poll_until(sub { sql($na, q{SELECT val FROM kv WHERE id = 2}) eq 'from b' }),
	"wk_b's own change reaches wk_a");

# Each change wk_b serves wakes its backend serving wk_a twice: the long
# poll's wait ends, and after the answer it waits for the next request.
# The poll's Sync comes with it, in the same write (sync.h, protocol.md
# 6.2); sent after the answer had arrived (before 2026-12-08) it cost a
# third sleep per change, waiting for that Sync (2.8 per change measured
# then, 1.9 since).
$before = voluntary_switches($pid);
my $seen0 = sql($na, q{SELECT rows_applied FROM registry.peer_status WHERE peer = 'wk_b'});
spaced_commits($nb, 200, 0.01);
sql($nb, q{UPDATE kv SET val = 'b done' WHERE id = 1});
ok(poll_until(sub { sql($na, q{SELECT val FROM kv WHERE id = 1}) eq 'b done' }),
	"wk_b's 201 changes arrive at wk_a");
my $served = sql($na, q{SELECT rows_applied FROM registry.peer_status WHERE peer = 'wk_b'})
  - $seen0;
my $sleeps = voluntary_switches($pid) - $before;
note("wk_a applied $served of wk_b's rows; wk_b's backend serving wk_a slept $sleeps times");
ok($served >= 100, "wk_a applied them in many transactions ($served rows)");
ok($sleeps < 2.2 * $served,
	"wk_b's backend serving wk_a slept at most about twice per change ($sleeps for $served)");

is(table_rows($na, 'kv'), table_rows($nb, 'kv'), 'both nodes hold the same rows');

$_->stop for ($na, $nb);
done_testing();
