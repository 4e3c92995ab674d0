# Notifications cost nothing while nobody listens, and lose nothing once
# somebody does.
#
# The notifier (the maintenance worker) sends registry_change and
# registry_wakeup only while some session of the server has run LISTEN on
# one of them (and not exited).  Without one it passes the changes over,
# without a NOTIFY transaction, and commits do not signal it.  Checked:
#
#  1. no listener: 100 commits 10 ms apart send no notification
#     (registry.node.notifications_sent), and the maintenance worker
#     sleeps fewer than 40 times (it was woken by each commit: 100 or
#     more); notified_seq still catches up with last_seq;
#  2. a session that LISTENs registry_change gets every change committed
#     after its LISTEN, each once, in order, and notifications_sent counts
#     them; not the three committed just before it, which the notifier
#     had not passed over yet;
#  3. LISTEN on another channel does not count as a listener;
#  4. LISTEN registry_wakeup alone counts (a peer of an older build
#     listens only there): its notification arrives;
#  5. once the listeners have exited, commits send nothing again;
#  6. of two listeners, the one left is still told after the other exits;
#  7. a LISTEN in another database does not count;
#  8. with a merge window (registry.notify_delay) too, nothing is sent
#     while nobody listens, and a new listener's first merged
#     notification covers no change from before its LISTEN;
#  9. a session stops counting once it no longer listens, at the commit
#     of its UNLISTEN or DISCARD ALL (a pooler's reset between clients),
#     or the rollback of its only LISTEN; an UNLISTEN rolled back (in a
#     transaction or a savepoint), or followed by a LISTEN, leaves it
#     counted; and it may listen and stop again many times.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(usleep);
use RegistryMesh;

plan skip_all => 'counts context switches in /proc' unless -r "/proc/self/status";

my $node = new_node('nl', conf => "registry.antientropy_interval = '1h'\n");
create_table([$node], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
sql($node, q{INSERT INTO kv VALUES (1, 'start')});

sub counter
{
	my ($name) = @_;
	return sql($node, "SELECT $name FROM registry.node");
}

sub caught_up
{
	return poll_until(
		sub { sql($node, 'SELECT notified_seq = last_seq FROM registry.node') eq 't' });
}

# Read the notifications psql printed after a query, as [channel, payload].
sub pump
{
	my ($session) = @_;
	my $out = $session->query_safe('SELECT 1');
	my @got;
	while ($out =~
		/^Asynchronous notification "([a-z_]+)" with payload "(.*)" received from server process with PID \d+\.\r?$/mg)
	{
		push @got, [ $1, decode_json($2) ];
	}
	return @got;
}

# Notifications a session receives, read until at least $n have come.
sub collect
{
	my ($session, $n) = @_;
	my @got;
	poll_until(
		sub {
			push @got, pump($session);
			return @got >= $n;
		});
	return @got;
}

# End a session and wait until its backend has gone (and with it its
# place among the listeners).
sub quit_and_wait
{
	my ($session) = @_;
	my $pid = $session->query_safe('SELECT pg_backend_pid()');
	chomp $pid;
	$session->quit;
	return poll_until(
		sub { sql($node, "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid") eq '0' });
}

# ---------------------------------------------------------------------
# 1. nobody listens
# ---------------------------------------------------------------------
ok(caught_up(), 'the notifier has dealt with the first change');
my $mpid = sql($node,
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'registry maintenance'});
ok($mpid =~ /^\d+$/, "the maintenance worker ($mpid)");
my $sent0 = counter('notifications_sent');
my $last0 = counter('last_seq');
my $sw0 = voluntary_switches($mpid);
spaced_commits($node, 100, 0.01);
my $sw = voluntary_switches($mpid) - $sw0;
note("with no listener the maintenance worker slept $sw times during 100 commits");
ok($sw < 40, "commits do not wake the maintenance worker ($sw sleeps for 100 commits)");
is(counter('last_seq') - $last0, 100, 'the 100 changes are in the change log');
ok(caught_up(), 'notified_seq catches up with last_seq all the same');
is(counter('notifications_sent'), $sent0, 'no notification was sent');
is(counter('notifications_lost'), '0', 'and none is counted as lost');

# ---------------------------------------------------------------------
# 2. a listener gets every change committed after its LISTEN
# ---------------------------------------------------------------------
# changes committed just before the LISTEN, which the notifier (asleep,
# with nobody to tell) has not dealt with yet: the listener is not told
# of them, as of nothing else older than its LISTEN
sql($node, "INSERT INTO kv VALUES ($_, 'before')") for 91 .. 93;
my $l = $node->background_psql('postgres');
$l->query_safe('LISTEN registry_change');
my $sent1 = counter('notifications_sent');
my $first = counter('last_seq') + 1;
for my $i (1 .. 5)
{
	sql($node, "INSERT INTO kv VALUES (" . (100 + $i) . ", 'new')");
}
my @got = collect($l, 5);
is(scalar(@got), 5, 'the listener got the 5 changes');
is_deeply(
	[ map { $_->[0] . ' ' . $_->[1]{op} . ' ' . $_->[1]{key} . ' ' . $_->[1]{seq} } @got ],
	[ map { 'registry_change insert ' . (100 + $_) . ' ' . ($first + $_ - 1) } 1 .. 5 ],
	'one notification per change, in order, with its key and seq (none of the changes before the LISTEN)');
ok(caught_up(), 'the notifier caught up');
is(counter('notifications_sent') - $sent1, 5, 'notifications_sent counts the 5');

# ---------------------------------------------------------------------
# 3 and 5. the listener exits; a LISTEN on another channel is no listener
# ---------------------------------------------------------------------
ok(quit_and_wait($l), 'the listener has exited');
my $other = $node->background_psql('postgres');
$other->query_safe('LISTEN some_other_channel');
my $sent2 = counter('notifications_sent');
sql($node, "UPDATE kv SET val = 'after' WHERE id = 101");
ok(caught_up(), 'the notifier dealt with the change');
is(counter('notifications_sent'), $sent2,
	'nothing sent once the listener has gone (a LISTEN elsewhere does not count)');
is(scalar(pump($other)), 0, 'the other channel got nothing');

# ---------------------------------------------------------------------
# 4. LISTEN registry_wakeup alone counts
# ---------------------------------------------------------------------
my $w = $node->background_psql('postgres');
$w->query_safe('LISTEN registry_wakeup');
my $last = counter('last_seq');
sql($node, "UPDATE kv SET val = 'wake' WHERE id = 102");
my @wake;
ok( poll_until(
		sub {
			push @wake, grep { $_->[0] eq 'registry_wakeup' } pump($w);
			return grep { $_->[1]{seq} > $last } @wake;
		}),
	'a registry_wakeup listener is woken for the next change');
is($wake[-1][1]{node}, 'nl', 'the wake-up names the node');

# ---------------------------------------------------------------------
# 6. of two listeners, one exits: the other is still told
# ---------------------------------------------------------------------
my $l2 = $node->background_psql('postgres');
$l2->query_safe('LISTEN registry_change');
ok(quit_and_wait($w), 'the registry_wakeup listener has exited');
sql($node, "UPDATE kv SET val = 'second' WHERE id = 103");
my @got2;
ok( poll_until(
		sub {
			push @got2, pump($l2);
			return grep { $_->[1]{key} eq '103' } @got2;
		}),
	'the remaining listener is told of the next change');
$other->quit;
ok(quit_and_wait($l2), 'the last listener has exited');

# ---------------------------------------------------------------------
# 7. a LISTEN in another database does not count: nothing could reach it
# ---------------------------------------------------------------------
sql($node, 'CREATE DATABASE elsewhere');
my $e = $node->background_psql('elsewhere');
$e->query_safe('LISTEN registry_change');
my $sent3 = counter('notifications_sent');
sql($node, "UPDATE kv SET val = 'unheard' WHERE id = 104");
ok(caught_up(), 'the notifier dealt with the change');
is(counter('notifications_sent'), $sent3,
	'nothing sent for a listener of another database');
$e->quit;

# ---------------------------------------------------------------------
# 8. the same with a merge window (registry.notify_delay)
# ---------------------------------------------------------------------
sql($node, "ALTER SYSTEM SET registry.notify_delay = '200ms'");
sql($node, 'SELECT pg_reload_conf()');
ok( poll_until(sub { sql($node, 'SHOW registry.notify_delay') eq '200ms' }),
	'notify_delay is 200ms');
for my $i (1 .. 10)
{
	sql($node, "UPDATE kv SET val = 'merged $i' WHERE id = 105");
}
ok(caught_up(), 'the notifier dealt with the 10 changes');
is(counter('notifications_sent'), $sent3,
	'with a merge window too, nothing sent while nobody listens');
my $m = $node->background_psql('postgres');
$m->query_safe('LISTEN registry_change');
sql($node, "UPDATE kv SET val = 'merged last' WHERE id = 105");
my @merged = collect($m, 1);
is(scalar(@merged), 1, 'a listener gets the merged notification of the next change');
is($merged[0][1]{count}, 1, 'covering that change only, none from before its LISTEN');
$m->quit;

# ---------------------------------------------------------------------
# 9. a session that stops listening stops counting, at its commit
# ---------------------------------------------------------------------
sql($node, 'ALTER SYSTEM RESET registry.notify_delay');
sql($node, 'SELECT pg_reload_conf()');
ok(poll_until(sub { sql($node, 'SHOW registry.notify_delay') eq '0' }),
	'notify_delay is back to 0');

# How many notifications one change sent, once the notifier has dealt with it.
sub sent_for_change
{
	my ($val) = @_;
	my $before = counter('notifications_sent');
	sql($node, "UPDATE kv SET val = '$val' WHERE id = 101");
	caught_up();
	return counter('notifications_sent') - $before;
}

my $p = $node->background_psql('postgres');
$p->query_safe('LISTEN registry_change');
ok(sent_for_change('p1') > 0, 'a listener: the change is notified');
$p->query_safe('BEGIN; UNLISTEN *; ROLLBACK');
ok(sent_for_change('p2') > 0, 'UNLISTEN * rolled back: still notified');
$p->query_safe('BEGIN; SAVEPOINT s; UNLISTEN registry_change; ROLLBACK TO s; COMMIT');
ok(sent_for_change('p3') > 0, 'an UNLISTEN in a subtransaction rolled back: still notified');
$p->query_safe('UNLISTEN registry_wakeup');
ok(sent_for_change('p4') > 0, 'UNLISTEN of a channel it does not listen on: still notified');
$p->query_safe('BEGIN; UNLISTEN registry_change; LISTEN registry_change; COMMIT');
ok(sent_for_change('p5') > 0, 'UNLISTEN then LISTEN in one transaction: still notified');
$p->query_safe('DISCARD ALL');
is(sent_for_change('p6'), 0,
	'after DISCARD ALL (a pooler handing the connection on) nothing is sent');
$p->query_safe('LISTEN registry_change');
ok(sent_for_change('p7') > 0, 'listening again: notified again');
$p->query_safe('BEGIN; LISTEN registry_wakeup; UNLISTEN *; COMMIT');
is(sent_for_change('p8'), 0, 'LISTEN then UNLISTEN * in one transaction: nothing sent');
$p->query_safe('BEGIN; LISTEN registry_change; ROLLBACK');
is(sent_for_change('p9'), 0, 'a LISTEN rolled back leaves no listener');
$p->query_safe('BEGIN; SAVEPOINT s; LISTEN registry_wakeup; RELEASE s; COMMIT');
ok(sent_for_change('p10') > 0, 'a LISTEN in a released savepoint counts');
$p->query_safe('UNLISTEN registry_wakeup');
is(sent_for_change('p11'), 0, 'UNLISTEN of its one channel: nothing sent');
# one exit callback per session, however often it listens again
for my $i (1 .. 30)
{
	$p->query_safe('LISTEN registry_change');
	$p->query_safe('UNLISTEN *');
}
is(sent_for_change('p12'), 0, 'after 30 LISTEN / UNLISTEN * pairs: nothing sent');
$p->query_safe('LISTEN registry_change');
ok(sent_for_change('p13') > 0, 'and its next LISTEN counts');
my @last = collect($p, 1);
ok((grep { $_->[1]{key} eq '101' } @last), 'the session receives that notification');
ok(quit_and_wait($p), 'the session has exited');
is(sent_for_change('p14'), 0, 'nothing sent once it has exited');

is(sql($node, 'SELECT count(*) FROM kv'), '9', 'the table holds its 9 rows');
$node->stop;
done_testing();
