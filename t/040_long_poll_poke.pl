# A long poll that registry.sync_now() ends early.  While idle, the sync
# worker's request for a peer's changes is held at the peer until the
# peer publishes a change or the wait ends (up to a second).  It is sent
# in libpq's pipeline mode with its Sync; when sync_now() asks for a
# round meanwhile, the worker sends a second Sync at once (a "poke"),
# which the peer sees as input from its client and answers now
# (docs/protocol.md 6.2).
#
# Checked: the peer ends the held poll because its client sent more (its
# log says so, at DEBUG1), the round asked for runs and converges, and
# the connection stays in use afterwards (no reconnect, no error): the
# one Sync of an ordinary poll and the two of a poked poll both leave it
# idle and out of pipeline mode.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use RegistryMesh;

my $na = new_node('lp_a', conf => "log_min_messages = debug1\n");
my $nb = new_node('lp_b', conf => "registry.antientropy_interval = '1h'\n");
create_table([ $na, $nb ], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
add_peer($nb, $na);
sql($na, q{INSERT INTO kv VALUES (1, 'one')});
ok(poll_until(sub { sql($nb, q{SELECT count(*) FROM kv}) eq '1' }),
	'a change reaches the puller through its long poll');

# lp_b's request is being held at lp_a: its backend waits in the registry's
# wait, running registry_changes
sub poll_held
{
	return sql($na, q{SELECT count(*) > 0 FROM pg_stat_activity
	  WHERE application_name = 'registry sync lp_b' AND state = 'active'
	    AND wait_event_type = 'Extension'});
}

# The poll lasts up to a second: try a few times to call sync_now() while
# one is held.  Each must converge; at least one must be seen ended early.
my $poked = 0;
my $rounds_ok = 1;
for my $try (1 .. 10)
{
	next unless poll_until(sub { poll_held() eq 't' });
	my $log_start = -s $na->logfile;
	$rounds_ok &&= sql($nb, q{SELECT registry.sync_now('lp_a', '60s')}) eq 't';
	my $seen = 0;
	for (1 .. 50)    # the log line follows the answer closely
	{
		$seen = slurp_file($na->logfile, $log_start) =~
		  /a long poll ended early: its client sent more/;
		last if $seen;
		usleep(100_000);
	}
	if ($seen)
	{
		$poked++;
		last if $poked >= 3;
	}
}
ok($rounds_ok, 'every sync_now() converged');
ok($poked >= 3, "sync_now() ended a held long poll early ($poked times)");

# the connection carries on: changes still arrive, nothing was reported
sql($na, q{INSERT INTO kv VALUES (2, 'two')});
ok(poll_until(sub { sql($nb, q{SELECT count(*) FROM kv}) eq '2' }),
	'changes still arrive after the pokes');
is(peer_status($nb, 'lp_a', 'connects, last_error'), '1|',
	'one connection all along, and no error');
is(table_rows($nb, 'kv'), table_rows($na, 'kv'), 'both nodes hold the same rows');

$_->stop for ($na, $nb);
done_testing();
