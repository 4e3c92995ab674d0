# pg_dump of a node restored into a fresh instance gives a working node:
#
#  - pg_restore runs without an error;
#  - the registration is taken up as the restore completes the table (the
#    DDL check, once the table's primary key and triggers are back),
#    with every row's and tombstone's version kept, verify() clean;
#  - the restored node writes, and syncs with the peers it was restored
#    with (its peer list is in the dump);
#  - a restore whose DDL ran with event triggers off (session_replication_role
#    = replica) is taken up by the sync worker instead, which leaves the
#    table alone while it is incomplete.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $na = new_node('dr_a');
my $nb = new_node('dr_b');
my $ddl = 'CREATE TABLE svc (name text, zone int, info jsonb, PRIMARY KEY (name, zone))';
create_table([ $na, $nb ], 'svc', $ddl);
full_mesh($na, $nb);
sql($na, q{INSERT INTO svc SELECT 'svc' || g, g % 3, jsonb_build_object('g', g)
  FROM generate_series(1, 200) g});
# the delete must find the rows on dr_b: wait for them first
wait_converged([ $na, $nb ], ['svc'], 'the inserts on both nodes');
sql($nb, q{DELETE FROM svc WHERE zone = 0 AND name LIKE 'svc1%'});
wait_converged([ $na, $nb ], ['svc'], 'the two nodes before the dump');
my $tombs = sql($na, q{SELECT tombstones FROM registry.tables});
ok($tombs > 0, "the dumped node has tombstones ($tombs)");

my $dump = PostgreSQL::Test::Utils::tempdir() . '/a.dump';
$na->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $na->connstr('postgres') ],
	'pg_dump of a node');

# a fresh instance with the registry preloaded, no extension yet
sub bare_node
{
	my ($name) = @_;
	my $n = PostgreSQL::Test::Cluster->new($name);
	$n->init;
	$n->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'registry'
registry.node_name = '$name'
registry.antientropy_interval = '1s'
registry.sync_interval = '200ms'
log_min_messages = info
});
	$n->start;
	return $n;
}

my $nc = bare_node('dr_c');
$nc->command_ok([ 'pg_restore', '--exit-on-error', '-d', $nc->connstr('postgres'), $dump ],
	'pg_restore into a fresh instance runs without an error');
wait_ready($nc);
like(slurp_file($nc->logfile), qr/took up registry table public\.svc, restored from a dump/,
	'the registration was taken up as the restore completed the table');
is(versions_state($nc, 'svc'), versions_state($na, 'svc'),
	'every row and tombstone kept its version and origin');
is(table_rows($nc, 'svc'), table_rows($na, 'svc'), 'the rows are those dumped');
is(sql($nc, q{SELECT rows || ' ' || tombstones FROM registry.tables}),
	sql($na, q{SELECT rows || ' ' || tombstones FROM registry.tables}),
	'registry.tables counts them');
is(sql($nc, q{SELECT digest_root FROM registry.tables}),
	sql($na, q{SELECT digest_root FROM registry.tables}),
	'... and has the same digest as the dumped node');
check_verify([$nc], 'after the restore');

# it writes, and its restored peer list has dr_b in it
is(sql($nc, q{SELECT string_agg(name, ',') FROM registry.peers}), 'dr_b',
	'the restored node has the dumped peer list');
my $max = sql($nc, q{SELECT max(registry_version) FROM svc});
sql($nc, q{INSERT INTO svc VALUES ('restored', 1, '{}')});
sql($nc, q{UPDATE svc SET info = '{"x": 1}' WHERE name = 'svc2' AND zone = 2});
ok(sql($nc, qq{SELECT min(registry_version) > $max FROM svc
  WHERE name IN ('restored', 'svc2')}) eq 't',
	'new writes get versions above every restored one');
add_peer($nb, $nc);
wait_converged([ $nb, $nc ], ['svc'], 'the restored node and its peer');
is(sql($nb, q{SELECT registry_origin FROM svc WHERE name = 'restored'}), 'dr_c',
	"the restored node's write reached its peer");

# DDL without event triggers: the sync worker takes the table up
my $nd = bare_node('dr_d');
$nd->command_ok([ 'pg_restore', '--exit-on-error', '--section=pre-data', '--section=data',
	'-d', $nd->connstr('postgres'), $dump ], 'pre-data and data restored');
# the table has no primary key, index or triggers yet: a round with the
# restored peer leaves it alone, and so does verify()
wait_ready($nd);
# (the worker reads the restored peer list within 10 s)
ok(poll_until(sub {
	sql($nd, q{SELECT coalesce(rounds, 0) > 0 FROM registry.peer_status WHERE peer = 'dr_b'}) eq 't' }),
	'a round with the restored peer completes while the table is incomplete');
is(sql($nd, q{SELECT count(*) FROM registry.verify()}), '0',
	'verify() passes over the incomplete table');
unlike(slurp_file($nd->logfile), qr/"registry sync" .* exited with exit code/,
	'the sync worker did not fail on it');
{
	local $ENV{PGOPTIONS} = '-c session_replication_role=replica';
	$nd->command_ok([ 'pg_restore', '--exit-on-error', '--section=post-data',
		'-d', $nd->connstr('postgres'), $dump ], 'post-data restored in replica mode');
}
wait_ready($nd);
ok(poll_until(sub { slurp_file($nd->logfile) =~ /took up registry table public\.svc/ }),
	'the sync worker took the table up');
# it then syncs with dr_b, which has dr_c's write since the dump
ok(poll_until(sub { versions_state($nd, 'svc') eq versions_state($nb, 'svc') }),
	'... and converges with its restored peer');
check_verify([$nd], 'after the worker took it up');

$_->stop for ($na, $nb, $nc, $nd);
done_testing();
