# What a new DBA and a first application trip over, each fixed:
#
#  1. CREATE EXTENSION without shared_preload_libraries gives the promised
#     error (55000), not a FATAL that ends the session.
#  2. A peer added under another name than its registry.node_name is said
#     in the log; the same node added twice is pulled from once.
#  3. A login role that is not in registry_peer is told which role to get.
#  4. sync_now() says why it returns false; peer_status has one column to
#     alert on (healthy, and since when, with the problem), lag reads NULL
#     (not 0) while a peer cannot be reached, and a healthy mesh looks
#     healthy again after a failure; notices peers send are logged with
#     the peer's name.
#  5. An UPDATE that changes nothing keeps its version: done on one node
#     after a real change on another, it no longer makes the old content
#     win everywhere.
#  6. Notifications carry the epoch and the key's column values.
#  7. The workers hold registry.database only while the extension exists
#     there: without it, DROP DATABASE works; after DROP EXTENSION too.
#  8. A fast shutdown logs no FATAL line for the registry's workers.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(usleep);
use RegistryMesh;

# ---- 1. no shared_preload_libraries ----

my $plain = PostgreSQL::Test::Cluster->new('np_plain');
$plain->init;
$plain->start;
my ($ret, $out, $err) = $plain->psql('postgres',
	"CREATE EXTENSION registry;\nSELECT 'still here';",
	on_error_stop => 0,
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/55000: registry must be loaded via shared_preload_libraries/,
	'CREATE EXTENSION without preloading fails with the promised error and SQLSTATE');
like($err, qr/HINT:\s+Add registry to shared_preload_libraries/, '... and its hint');
is($out, 'still here', 'the session goes on after the error (no FATAL)');
($ret, $out, $err) = $plain->psql('postgres', "LOAD 'registry'; SELECT 'loaded'");
is($out, 'loaded', 'LOAD of the library without preloading ends no session');
unlike(slurp_file($plain->logfile), qr/FATAL/, 'no FATAL in the log');
$plain->stop;

# ---- nodes ----

my $na = new_node('np_a');
my $nb = new_node('np_b');
create_table([ $na, $nb ], 'kv', 'CREATE TABLE kv (k text PRIMARY KEY, v int)');
create_table([ $na, $nb ], 'comp',
	'CREATE TABLE comp (name text, zone int, v int, PRIMARY KEY (name, zone))');
full_mesh($na, $nb);
wait_converged([ $na, $nb ], ['kv'], 'the two nodes start in sync');

# ---- 2. peer names ----

my $bconn = $nb->connstr('postgres');
sql($na, "SELECT registry.add_peer('b_alias', " . quote_literal($bconn) . ')');
ok( poll_until(
		sub {
			(peer_status($na, 'b_alias', 'last_error') // '') =~
			  /is node "np_b", which this node pulls from as peer "np_b"/;
		}),
	'a node added a second time, under another name, is refused'
) or diag(peer_status($na, 'b_alias', 'state, last_error'));
ok(poll_until(sub { peer_status($na, 'np_b', 'healthy') eq 't' }),
	'the peer named after the node keeps syncing');
# alone, the misnamed peer syncs, and the log says what it is
sql($na, "SELECT registry.remove_peer('np_b')");
ok( poll_until(
		sub {
			slurp_file($na->logfile) =~
			  /WARNING:  registry: peer "b_alias" reports node name "np_b"/;
		}),
	'a peer named otherwise than the node it reports is named in the log');
is(peer_status($na, 'b_alias', 'remote_node'), 'np_b', 'peer_status shows the name it reports');
sql($na, "SELECT registry.remove_peer('b_alias')");
add_peer($na, $nb);

# ---- 3. a login role that is not a member of registry_peer ----

sql($nb, 'CREATE ROLE outsider LOGIN');
my $outsider = $nb->connstr('postgres') . ' user=outsider';
sql($na, "SELECT registry.add_peer('b_outsider', " . quote_literal($outsider) . ')');
ok( poll_until(
		sub {
			(peer_status($na, 'b_outsider', 'last_error') // '') =~
			  /permission denied to read the registry.*GRANT registry_peer TO outsider/;
		}),
	'a peer role outside registry_peer is told what to grant, on one line'
) or diag(peer_status($na, 'b_outsider', 'last_error'));
unlike(peer_status($na, 'b_outsider', 'last_error'), qr/[\n\t]/,
	'last_error has no newlines or tabs');
sql($na, "SELECT registry.remove_peer('b_outsider')");

# ---- 4. health ----

my $dead_port = PostgreSQL::Test::Cluster::get_free_port();
sql($na,
	"SELECT registry.add_peer('gone', 'host=127.0.0.1 port=$dead_port dbname=postgres connect_timeout=1')"
);
ok( poll_until(
		sub { peer_status($na, 'gone', 'state') eq 'error' }),
	'an unreachable peer is in state error');
is( peer_status($na, 'gone',
		"healthy::text || '|' || (lag_changes IS NULL) || '|' || (lag_ms IS NULL) || '|' || (problem LIKE 'could not connect%')"
	),
	'false|true|true|true',
	'it is unhealthy, its lag is unknown (NULL, not 0), its problem is named');
($ret, $out, $err) = $na->psql('postgres', "SELECT registry.sync_now('gone', '2s')");
is($out, 'f', 'sync_now with it returns false');
like($err, qr/NOTICE:  sync with peer "gone" not confirmed: .*\n.*DETAIL:  could not connect/,
	'... and says why, with the peer\'s problem');
sql($na, "SELECT registry.remove_peer('gone')");

# a failure and a recovery: healthy again, the old error kept as history
$nb->stop('immediate');
ok( poll_until(sub { peer_status($na, 'np_b', 'healthy') eq 'f' }),
	'a peer that stops becomes unhealthy');
my $since = peer_status($na, 'np_b', 'health_changed_at');
is(peer_status($na, 'np_b', 'lag_changes IS NULL'), 't', 'and its lag unknown');
# failed attempts: the pause before the next one is 500 ms, doubled at
# each failure (BACKOFF_MIN_MS in src/sync.h, sync_conn_disconnect()).
# At least one failure is counted in errors0, so five more make the pause
# at least 500 ms * 2^5 = 16 s: far longer than sync_now() waits below,
# so that only sync_now() waking the worker can make it connect in time.
my $errors0 = peer_status($na, 'np_b', 'errors');
ok(poll_until(sub { peer_status($na, 'np_b', 'errors') >= $errors0 + 5 }),
	'the sync worker keeps trying, with a growing pause');
$nb->start;
is(sql($na, q{SELECT registry.sync_now('np_b', '3s')}), 't',
	'the first sync_now() after the peer is back connects at once, seconds before the pause ends, and confirms the sync');
ok( poll_until(
		sub {
			sql($na, q{SELECT registry.sync_now('np_b', '5s')});
			peer_status($na, 'np_b', 'healthy') eq 't';
		}),
	'once back and synced, it is healthy again');
is( peer_status(
		$na, 'np_b',
		"problem IS NULL AND errors > 0 AND last_error IS NOT NULL AND health_changed_at > '$since'"
	),
	't',
	'with no problem, a later health change, and the past error kept in last_error');
is( peer_status($na, 'np_b', 'lag_changes || \'/\' || lag_ms'),
	'0/0', 'its lag is known again, and zero');
like(slurp_file($na->logfile),
	qr/LOG:  registry: peer "np_b" sent WARNING: terminating connection because of unexpected SIGQUIT signal|LOG:  registry: peer "np_b" sent WARNING: terminating connection due to immediate shutdown command/,
	'the notice np_b sent as it stopped is logged with its name');
unlike(slurp_file($na->logfile), qr/^WARNING:  terminating connection/m,
	'notices of a peer are not written to the log without a prefix');

# health is the sync worker's word: without a sync worker, no peer is
# healthy.  The launcher is held (SIGSTOP) so that it does not start the
# worker again at once.
sub launcher_pid
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'registry launcher'});
}

# Proof that the launcher (pid $pid) went through $n complete loops since
# the call.  Each loop starts with a scan of pg_database (database_exists()
# in src/worker.c).  A session holds pg_database exclusively until the
# launcher is seen waiting for it, then lets go and takes it again at
# once: the launcher, granted the lock at the release, must finish that
# loop before it waits again at the top of the next.  n+1 sightings are n
# complete loops.  While the lock is held nothing may read pg_database:
# no new connection, and pg_locks rather than pg_stat_activity.
sub launcher_loops
{
	my ($node, $pid, $n) = @_;
	my $holder = $node->background_psql('postgres');
	my $watcher = $node->background_psql('postgres');
	my $seen = 0;
	for (0 .. $n)
	{
		$holder->query_safe('BEGIN; LOCK TABLE pg_catalog.pg_database IN ACCESS EXCLUSIVE MODE');
		my $waiting = poll_until(
			sub {
				$watcher->query_safe(
					qq{SELECT count(*) FROM pg_catalog.pg_locks
 WHERE pid = $pid AND locktype = 'relation' AND relation = 1262 AND NOT granted}) eq '1';
			});
		$holder->query_safe('COMMIT');
		last unless $waiting;
		$seen++;
	}
	$holder->quit;
	$watcher->quit;
	diag("the launcher was seen at the top of its loop $seen times, not " . ($n + 1))
	  if $seen != $n + 1;
	return $seen == $n + 1;
}

# The registry workers the postmaster was asked to start, in a piece of a
# log written at log_min_messages = debug1.
sub started_workers
{
	my ($log) = @_;
	my $n = () = $log =~
	  /starting background worker process "registry (?:sync|maintenance)"/g;
	return $n;
}

my $launcher = launcher_pid($na);
kill 'STOP', $launcher;
sql($na, q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'registry sync'});
ok( poll_until(
		sub {
			sql($na, q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'registry sync'}) eq
			  '0';
		}),
	'the sync worker is gone (and the launcher held)');
is(peer_status($na, 'np_b', q{healthy || '|' || problem}),
	'false|the registry sync worker is not running',
	'without a sync worker the peer is not healthy, and the problem says why');
kill 'CONT', $launcher;
ok( poll_until(
		sub {
			sql($na, q{SELECT registry.sync_now('np_b', '5s')});
			peer_status($na, 'np_b', 'healthy') eq 't';
		}),
	'with the sync worker back, healthy again after a round');

# a new connection string is another server, perhaps: not healthy until
# a round with it completed.  np_b's postmaster is held, so the new
# connection cannot be made while the test looks.
kill 'STOP', $nb->{_pid};
sql($na, "SELECT registry.add_peer('np_b', " . quote_literal($nb->connstr('postgres') . ' application_name=renamed') . ')');
ok( poll_until(
		sub {
			peer_status($na, 'np_b', q{state || '|' || healthy || '|' || problem}) eq
			  'connecting|false|no anti-entropy round completed yet';
		}),
	'a peer whose connection string changed is not healthy until its first round'
) or diag(peer_status($na, 'np_b', q{state || '|' || healthy || '|' || coalesce(problem, '')}));
kill 'CONT', $nb->{_pid};
ok( poll_until(
		sub {
			sql($na, q{SELECT registry.sync_now('np_b', '5s')});
			peer_status($na, 'np_b', 'healthy') eq 't';
		}),
	'and healthy once it completed');

# ---- 5. an UPDATE that changes nothing ----

sql($na, q{INSERT INTO kv VALUES ('hazard', 1)});
wait_converged([ $na, $nb ], ['kv'], 'the row is on both nodes');
# np_b stops pulling from np_a for a moment
sql($nb, q{SELECT registry.remove_peer('np_a')});
ok( $na->poll_query_until(
		'postgres', q{
SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'registry sync np_b'}),
	'np_b no longer pulls from np_a');
sql($na, q{UPDATE kv SET v = 2 WHERE k = 'hazard'});
my $seq_b = sql($nb, 'SELECT last_seq FROM registry.node');
sql($nb, q{UPDATE kv SET v = v WHERE k = 'hazard'});    # later, and changes nothing
is(sql($nb, 'SELECT last_seq FROM registry.node'), $seq_b,
	'the UPDATE that changed nothing published no change');
add_peer($nb, $na);
wait_converged([ $na, $nb ], ['kv'], 'the nodes converge again');
is(sql($_, q{SELECT v FROM kv WHERE k = 'hazard'}), '2',
	'the real change wins on ' . $_->name)
  for ($na, $nb);

# ---- 6. notifications: epoch and key values ----

my $listener = $na->background_psql('postgres');
$listener->query_safe('LISTEN registry_change');
sql($na, q{INSERT INTO comp VALUES ('looks,composite', 7, 1)});
my $payload;
ok( poll_until(
		sub {
			my $o = $listener->query_safe('SELECT 1');
			$payload = $1
			  if $o =~
			  /^Asynchronous notification "registry_change" with payload "(.*)" received/m;
			return defined $payload;
		}),
	'a notification arrives');
my $p = decode_json($payload);
is($p->{epoch}, sql($na, 'SELECT epoch FROM registry.node'),
	'it carries the epoch, as a string');
is_deeply($p->{key_values}, [ 'looks,composite', '7' ],
	'and the key\'s column values, no parser needed');
is($p->{key}, '("looks,composite",7)', 'and still the canonical key text');
$listener->quit;

# ---- 7. the workers and the database ----

my $nc = PostgreSQL::Test::Cluster->new('np_c');
$nc->init;
$nc->append_conf('postgresql.conf', q{
shared_preload_libraries = 'registry'
registry.node_name = 'np_c'
registry.database = 'regdb'
log_min_messages = debug1
max_prepared_transactions = 2
});
$nc->start;
sub workers_in
{
	my ($db) = @_;
	return $nc->safe_psql('postgres', qq{
SELECT count(*) FROM pg_stat_activity
 WHERE datname = '$db' AND backend_type IN ('registry maintenance', 'registry sync')});
}
$nc->safe_psql('postgres', 'CREATE DATABASE regdb');
# both workers come, find no extension and leave
ok( poll_until(
		sub {
			my $l = slurp_file($nc->logfile);
			my $n = () = $l =~ /the extension is not created in database "regdb": the registry \w+ worker leaves it/g;
			return $n >= 2;
		}),
	'the workers find no extension in registry.database and leave');
is(workers_in('regdb'), '0', 'no registry worker stays in registry.database');
is(($nc->psql('postgres', 'DROP DATABASE regdb'))[0], 0, 'so it can be dropped');
$nc->safe_psql('postgres', 'CREATE DATABASE regdb');
$nc->safe_psql('regdb', 'CREATE EXTENSION registry');
ok( $nc->poll_query_until('postgres', q{
SELECT count(*) = 2 FROM pg_stat_activity
 WHERE datname = 'regdb' AND backend_type IN ('registry maintenance', 'registry sync')}),
	'CREATE EXTENSION brings the workers');
ok($nc->poll_query_until('regdb', q{SELECT state = 'ready' FROM registry.node}),
	'and the node becomes ready');

# the launcher killed and started again by the postmaster: it leaves the
# workers it did not start alone, no second pair
my $workers = q{SELECT string_agg(pid::text, ',' ORDER BY backend_type) FROM pg_stat_activity
 WHERE datname = 'regdb' AND backend_type IN ('registry maintenance', 'registry sync')};
my $pair = $nc->safe_psql('postgres', $workers);
my $old_launcher = launcher_pid($nc);
my $restart_at = -s $nc->logfile;
$nc->safe_psql('postgres', "SELECT pg_terminate_backend($old_launcher)");
ok( poll_until(
		sub {
			my $l = launcher_pid($nc);
			return $l ne '' && $l ne $old_launcher;
		}),
	'a terminated launcher is started again');
# its first loops start nothing: seen through two complete loops
ok(launcher_loops($nc, launcher_pid($nc), 2),
	'the new launcher went through two loops');
is($nc->safe_psql('postgres', $workers), $pair,
	'the new launcher starts no second pair of workers next to the running ones');
is(started_workers(substr(slurp_file($nc->logfile), $restart_at)), 0,
	'and asked the postmaster for none');

# DROP EXTENSION in a prepared transaction: refused (COMMIT PREPARED
# would not tell the workers)
($ret, $out, $err) = $nc->psql('regdb',
	"BEGIN; DROP EXTENSION registry; PREPARE TRANSACTION 'drop_it';",
	on_error_stop => 1,
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err,
	qr/0A000: cannot PREPARE a transaction that creates or drops extension registry/,
	'a transaction that drops the extension cannot be prepared');
is($nc->safe_psql('regdb',
		q{SELECT count(*) FROM pg_extension WHERE extname = 'registry'} . q{ UNION ALL SELECT count(*) FROM pg_prepared_xacts}),
	"1\n0", 'the extension is still there and nothing is prepared');
# (were it prepared, it would hold the extension's locks: let go of it)
$nc->safe_psql('regdb', "ROLLBACK PREPARED 'drop_it'")
  if $nc->safe_psql('regdb', 'SELECT count(*) FROM pg_prepared_xacts') ne '0';

my $log_at = -s $nc->logfile;
$nc->safe_psql('regdb', 'DROP EXTENSION registry');
ok( $nc->poll_query_until('postgres', q{
SELECT count(*) = 0 FROM pg_stat_activity
 WHERE datname = 'regdb' AND backend_type IN ('registry maintenance', 'registry sync')}),
	'DROP EXTENSION sends them away');
# each leaves once: the launcher knows they saw the drop, and does not
# start them again to find out.  A worker it took for failed would be
# started again after its backoff (1 s, worker.c), that is within two
# loops of the launcher seeing it exit; four loops leave room for the exit
# to be seen a loop late.
my $leaves_re =
  qr/the extension is not created in database "regdb": the registry \w+ worker leaves it/;
sub leaves
{
	my $n = () = substr(slurp_file($nc->logfile), $log_at) =~ /$leaves_re/g;
	return $n;
}
ok(poll_until(sub { leaves() >= 2 }), 'both workers left after DROP EXTENSION');
ok(launcher_loops($nc, launcher_pid($nc), 4),
	'the launcher went through four loops since');
is(leaves(), 2, 'each worker left once after DROP EXTENSION, and was not started again');
my $after_drop = substr(slurp_file($nc->logfile), $log_at);
$after_drop =~ /$leaves_re(?s:.*?)$leaves_re/ or die 'two leaves lines expected';
is(started_workers(substr($after_drop, $+[0])), 0,
	'no worker was asked for after the second one left');
is(($nc->psql('postgres', 'DROP DATABASE regdb'))[0], 0, 'and the database can be dropped');

# ---- 8. a fast shutdown ----

my $log_before = -s $na->logfile;
$na->stop('fast');
my $log = substr(slurp_file($na->logfile), $log_before);
unlike($log, qr/FATAL:.*registry/, 'a fast shutdown logs no FATAL line for the registry workers')
  or diag($log);
$nc->stop('fast');
unlike(slurp_file($nc->logfile), qr/FATAL:.*registry/,
	'nor on the node whose workers came and went');

done_testing();
