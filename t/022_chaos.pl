# Failures while every node writes.  Three nodes in a full mesh run
# pgbench at the same time on the same keys (upserts, multi-row updates,
# deletes and re-inserts, in two tables).  Meanwhile one node's sync
# worker is killed, one node crashes (immediate stop) and restarts, and
# another is restarted cleanly.  Afterwards every node must hold the same
# rows with the same versions and the same tombstones, registry.verify()
# must find nothing wrong, and the clients on the nodes that stayed up
# must have had no failed transaction.
#
# When the faults land depends on the machine's speed; what is asserted
# does not: whatever the interleaving, the nodes must converge.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use RegistryMesh;

my @nodes = map { new_node($_) } qw(chaos_a chaos_b chaos_c);
my ($na, $nb, $nc) = @nodes;
create_table(\@nodes, 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
create_table(\@nodes, 'svc',
	'CREATE TABLE svc (name text, zone int, endpoints jsonb, PRIMARY KEY (name, zone))'
);
full_mesh(@nodes);

# 100 keys per table, shared by every node, so that nodes overwrite each
# other's rows, delete them and bring keys back all the time.
my $script = $PostgreSQL::Test::Utils::tmp_check . '/chaos.sql';
open(my $fh, '>', $script) or die "could not write $script: $!";
print $fh q{
\set k random(1, 100)
\set n random(1, 20)
\set z random(1, 5)
\set op random(1, 10)
BEGIN;
INSERT INTO kv VALUES (:k, 'c' || :client_id || '-' || :op)
  ON CONFLICT (id) DO UPDATE SET val = excluded.val;
INSERT INTO svc VALUES ('s' || :n, :z, jsonb_build_array(:client_id, :op))
  ON CONFLICT (name, zone) DO UPDATE SET endpoints = excluded.endpoints;
UPDATE kv SET val = val || '+' WHERE id BETWEEN :k AND :k + 3 AND :op <= 3;
DELETE FROM kv WHERE id = (:k * 7) % 100 + 1 AND :op <= 4;
DELETE FROM svc WHERE name = 's' || :n AND zone = (:z % 5) + 1 AND :op <= 4;
COMMIT;
};
close($fh);

# Rarer: keys moved by an UPDATE (a delete and an insert; a move onto a
# taken key is caught in a subtransaction), and a TRUNCATE of svc
# (replicated as deletes).
my $script_move = $PostgreSQL::Test::Utils::tmp_check . '/chaos_move.sql';
open($fh, '>', $script_move) or die "could not write $script_move: $!";
print $fh q{
\set k random(1, 100)
\set k2 random(1, 100)
DO $$ BEGIN UPDATE kv SET id = :k2 WHERE id = :k; EXCEPTION WHEN unique_violation THEN NULL; END $$;
};
close($fh);
my $script_trunc = $PostgreSQL::Test::Utils::tmp_check . '/chaos_trunc.sql';
open($fh, '>', $script_trunc) or die "could not write $script_trunc: $!";
print $fh q{
TRUNCATE svc;
};
close($fh);

# pgbench on $node for $secs seconds, in the background.  Deadlocks (a
# TRUNCATE against row writers) and the registry's own conflicts are
# retried.
sub start_load
{
	my ($node, $secs) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[
			'pgbench', '-n', '-c', '2', '-j', '2', '-T', $secs,
			'--max-tries=20', '-f', "$script\@40", '-f', "$script_move\@10",
			'-f', "$script_trunc\@1",
			'-h', $node->host, '-p', $node->port, 'postgres'
		],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, name => $node->name };
}

sub finish_load
{
	my ($load) = @_;
	$load->{h}->finish;
	my @codes = $load->{h}->results;
	note($load->{name} . ' pgbench: ' . ${ $load->{out} } . ${ $load->{err} });
	return $codes[0];
}

my %load = map { $_->name => start_load($_, 12) } @nodes;

# let the load and replication get going
poll_until(sub { sql($nc, 'SELECT count(*) FROM kv') > 20 })
  or die 'no load reached chaos_c';

# 1. chaos_b's sync worker is killed (the launcher starts a new one)
my $killed = sql($nb,
	q{SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'registry sync'}
);
is($killed, '1', 'killed the sync worker of chaos_b under load');

# 2. chaos_c crashes mid-load and comes back; its own clients die with it
usleep(500_000);
$nc->stop('immediate');
finish_load($load{chaos_c});
usleep(500_000);
$nc->start;
wait_ready($nc);
$load{chaos_c} = start_load($nc, 4);

# 3. chaos_a restarts cleanly (fast shutdown) while the others write
usleep(500_000);
$na->stop('fast');
$na->start;
wait_ready($na);

for my $name (qw(chaos_b chaos_c))
{
	is(finish_load($load{$name}), 0,
		"pgbench on $name: no failed transaction")
	  or diag(${ $load{$name}{err} });
}
# chaos_a's clients lost their server at the restart: only their output
# is of interest, for the log
finish_load($load{chaos_a});

# a little more load on chaos_a after its restart, then quiet
my $a_again = start_load($na, 2);
is(finish_load($a_again), 0, 'pgbench on chaos_a after its restart: no failed transaction')
  or diag(${ $a_again->{err} });

wait_converged(\@nodes, [ 'kv', 'svc' ],
	'after a killed sync worker, a crash and a restart under load, every node has the same rows, versions and tombstones'
);
check_verify(\@nodes, 'after the chaos');

# The data is real: both tables were written, and some keys were deleted.
cmp_ok(sql($na, 'SELECT count(*) FROM kv'), '>', 0, 'kv has rows');
# (svc may just have been truncated)
cmp_ok(sql($na, q{SELECT count(*) FROM registry.versions('svc')}),
	'>', 0, 'svc has keys');
cmp_ok(
	sql($na,
		q{SELECT count(*) FROM registry.versions('kv') WHERE deleted}),
	'>', 0, 'kv has tombstones');

# Each table's digest root is the same everywhere.
my @roots = map {
	sql($_,
		q{SELECT string_agg(format('%s %s rows %s tombstones %s', table_name, rows, tombstones, digest_root), ', ' ORDER BY table_name) FROM registry.tables}
	)
} @nodes;
is($roots[1], $roots[0], 'chaos_b has chaos_a\'s row and tombstone counts and digest roots');
is($roots[2], $roots[0], 'chaos_c has chaos_a\'s row and tombstone counts and digest roots');

$_->stop for @nodes;
done_testing();
