# A registry table locked on this node holds up neither its other tables
# nor its peers.  The sync worker applies one table's batch at a time; the
# table's lock is waited for within registry.query_timeout, after which
# the batch fails (recorded in registry.peer_status, retried), and the
# worker goes on.  Without that bound a local LOCK TABLE, or a TRUNCATE
# queued behind a lock, stopped all replication into the node for as long
# as it was held.
#
# lt_b pulls from lt_a (query_timeout 2 s).  A client on lt_b holds
# LOCK TABLE svc IN ACCESS EXCLUSIVE MODE; lt_a writes svc, then (once
# lt_b's worker waits for that lock) kv.  kv's row must reach lt_b while
# the lock is held; svc's once it is released.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $na = new_node('lt_a', conf => "registry.antientropy_interval = '1h'\n");
my $nb = new_node('lt_b',
	conf => "registry.antientropy_interval = '1h'\nregistry.query_timeout = '2s'\n");
create_table([ $na, $nb ], 'svc', 'CREATE TABLE svc (id int PRIMARY KEY, val text)');
create_table([ $na, $nb ], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
add_peer($nb, $na);
sql($na, q{INSERT INTO svc VALUES (1, 'one'); INSERT INTO kv VALUES (1, 'one')});
ok(poll_until(sub { sql($nb, q{SELECT count(*) FROM svc}) eq '1'
		  && sql($nb, q{SELECT count(*) FROM kv}) eq '1' }),
	'the first rows arrive');

my $locker = $nb->background_psql('postgres');
my $locker_pid = $locker->query_safe('SELECT pg_backend_pid()');
$locker->query_safe(q{BEGIN; LOCK TABLE svc IN ACCESS EXCLUSIVE MODE;});
my $errors0 = peer_status($nb, 'lt_a', 'errors');

sql($na, q{INSERT INTO svc VALUES (2, 'two')});
ok(poll_until(sub {
		sql($nb, qq{SELECT count(*) FROM pg_locks WHERE relation = 'svc'::regclass
		  AND NOT granted AND pid <> $locker_pid}) ne '0' }),
	"lt_b's sync worker waits for svc's lock");
sql($na, q{INSERT INTO kv VALUES (2, 'two')});
ok(poll_until(sub { sql($nb, q{SELECT count(*) FROM kv}) eq '2' }),
	"kv's new row reaches lt_b while svc is locked there");
is(sql($nb, q{SELECT count(*) FROM pg_locks WHERE relation = 'svc'::regclass AND mode = 'AccessExclusiveLock' AND granted}),
	'1', '... the lock still held');
ok(peer_status($nb, 'lt_a', 'errors') > $errors0, 'the failed apply is counted');
like(peer_status($nb, 'lt_a', 'last_error'), qr/lock timeout/,
	'... and named: a lock timeout');

$locker->query_safe('COMMIT');
$locker->quit;
ok(poll_until(sub { sql($nb, q{SELECT count(*) FROM svc}) eq '2' }),
	"svc's row arrives once the lock is released");
is(table_rows($nb, 'svc'), table_rows($na, 'svc'), 'svc: the same rows, with versions');
is(table_rows($nb, 'kv'), table_rows($na, 'kv'), 'kv: the same rows, with versions');
$_->stop for ($na, $nb);
done_testing();
