# Failures while every node writes.  Three nodes in a full mesh run
# pgbench at the same time on the same keys, in two tables: upserts,
# multi-row updates, deletes and re-inserts, keys moved by UPDATE,
# savepoints rolled back, TRUNCATE.  Meanwhile one node's sync worker is
# killed, clocks are stepped back and forward, one node crashes
# (immediate stop) and restarts, another is restarted cleanly, and one
# resyncs a table (drops its copy and refills it from the others).
# Afterwards every node must hold the same rows with the same versions
# and the same tombstones, registry.verify() must find nothing wrong, and
# the clients on the nodes that stayed up must have had no failed
# transaction.  The same runs again with every shared structure at its
# minimum; each mesh is then partitioned while all write and healed; and
# a fourth node joins the first mesh while all write.
#
# When the faults land depends on the machine's speed; what is asserted
# does not: whatever the interleaving, the nodes must converge.  One round
# by default; REGISTRY_CHAOS_ROUNDS=n runs n, moving the roles round the
# nodes (a soak, not for CI).
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);
use RegistryMesh;

# the three nodes of the mesh under test (set by run_mesh)
my @nodes;

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

# Less often: keys moved by an UPDATE (a delete and an insert; a move onto a
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
# A key deleted and written again in one transaction, a part rolled back
# to a savepoint, and inserts that do nothing on a conflict.
my $script_mixed = $PostgreSQL::Test::Utils::tmp_check . '/chaos_mixed.sql';
open($fh, '>', $script_mixed) or die "could not write $script_mixed: $!";
print $fh q{
\set k random(1, 100)
\set k2 random(1, 100)
\set n random(1, 20)
BEGIN;
DELETE FROM kv WHERE id = :k;
INSERT INTO kv VALUES (:k, 'again ' || :client_id) ON CONFLICT DO NOTHING;
SAVEPOINT s;
UPDATE svc SET endpoints = '["rolled back"]' WHERE name = 's' || :n;
DELETE FROM kv WHERE id = :k2;
ROLLBACK TO s;
INSERT INTO kv VALUES (:k2, 'kept ' || :client_id) ON CONFLICT DO NOTHING;
COMMIT;
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
			'-f', "$script_mixed\@10", '-f', "$script_trunc\@1",
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

# One round: all three nodes write; meanwhile $killw's sync worker is
# killed and its clock stepped back, $restart's clock is put ahead,
# $crash crashes and comes back, $restart restarts cleanly, and $killw
# resyncs svc.
sub chaos_round
{
	my ($round, $killw, $crash, $restart) = @_;
	my ($kn, $cn, $rn) = map { $_->name } ($killw, $crash, $restart);
	my %load = map { $_->name => start_load($_, 12) } @nodes;

	# let the load and replication get going
	my $base = sql($crash, q{SELECT coalesce(max(registry_version), 0) FROM kv});
	poll_until(
		sub {
			sql($crash, qq{SELECT count(*) FROM kv WHERE registry_version > $base}) > 20;
		}) or die "no load reached $cn";

	# (after a restart in an earlier round, its sync worker may still be
	# starting: wait for it rather than kill nothing)
	$killw->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'registry sync'})
	  or die "no sync worker on $kn";
	is( sql($killw,
			q{SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'registry sync'}
		),
		'1',
		"round $round: killed the sync worker of $kn under load");

	# clocks stepped: one node's back by 5 s, one's ahead by 3 s (which
	# steps back again when it restarts, the offset being forgotten)
	sql($killw,   q{SELECT registry.set_clock_offset('-5 seconds')});
	sql($restart, q{SELECT registry.set_clock_offset('3 seconds')});

	# a crash mid-load; its own clients die with it
	usleep(500_000);
	$crash->stop('immediate');
	finish_load($load{$cn});
	usleep(500_000);
	$crash->start;
	wait_ready($crash);
	$load{$cn} = start_load($crash, 4);

	# a clean restart (fast shutdown) while the others write
	usleep(500_000);
	$restart->stop('fast');
	$restart->start;
	wait_ready($restart);

	# an operator's resync of one table, under load: the node drops its
	# copy of svc and refills it from the others while it writes
	sql($killw, q{SELECT registry.resync('svc')});

	for my $name ($kn, $cn)
	{
		is(finish_load($load{$name}), 0,
			"round $round: pgbench on $name: no failed transaction")
		  or diag(${ $load{$name}{err} });
	}
	# the restarted node's clients lost their server: only their output
	# is of interest, for the log; then a little more load there
	finish_load($load{$rn});
	my $again = start_load($restart, 2);
	is(finish_load($again), 0,
		"round $round: pgbench on $rn after its restart: no failed transaction")
	  or diag(${ $again->{err} });

	sql($killw, q{SELECT registry.set_clock_offset('0')});
	wait_converged(\@nodes, [ 'kv', 'svc' ],
		"round $round: after a killed sync worker, a crash and a restart under load, every node has the same rows, versions and tombstones"
	);
	check_verify(\@nodes, "round $round");
	is( join(',',
			map { sql($_, q{SELECT count(*) FROM svc WHERE endpoints = '["rolled back"]'}) }
			  @nodes),
		'0,0,0',
		"round $round: nothing rolled back to a savepoint reached any node");

	# Each table's counts and digest root are the same everywhere.
	my @names = map { $_->name } @nodes;
	my @roots = map {
		sql($_,
			q{SELECT string_agg(format('%s %s rows %s tombstones %s', table_name, rows, tombstones, digest_root), ', ' ORDER BY table_name) FROM registry.tables}
		)
	} @nodes;
	is($roots[1], $roots[0],
		"round $round: $names[1] has $names[0]'s row and tombstone counts and digest roots");
	is($roots[2], $roots[0],
		"round $round: $names[2] has $names[0]'s row and tombstone counts and digest roots");
}

# Three new nodes named $prefix_a.. with extra configuration $conf, in a
# full mesh, through REGISTRY_CHAOS_ROUNDS rounds (default 1), the roles
# moving on by one node each round; with join => 1, then a fourth node
# joins while all write.
sub run_mesh
{
	my ($prefix, $conf, %opts) = @_;
	@nodes = map { new_node("${prefix}_$_", conf => $conf) } qw(a b c);
	create_table(\@nodes, 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
	create_table(\@nodes, 'svc',
		'CREATE TABLE svc (name text, zone int, endpoints jsonb, PRIMARY KEY (name, zone))'
	);
	full_mesh(@nodes);

	my $rounds = $ENV{REGISTRY_CHAOS_ROUNDS} // 1;
	for my $r (1 .. $rounds)
	{
		my @order = map { $nodes[ ($_ + $r - 1) % 3 ] } 0 .. 2;
		chaos_round("$prefix $r", $order[1], $order[2], $order[0]);
	}

	partition_under_load($prefix);
	join_under_load($prefix) if $opts{join};

	# The data is real: both tables were written, and some keys deleted.
	my $na = $nodes[0];
	cmp_ok(sql($na, 'SELECT count(*) FROM kv'), '>', 0, "$prefix: kv has rows");
	# (svc may just have been truncated)
	cmp_ok(sql($na, q{SELECT count(*) FROM registry.versions('svc')}),
		'>', 0, "$prefix: svc has keys");
	cmp_ok(
		sql($na,
			q{SELECT count(*) FROM registry.versions('kv') WHERE deleted}),
		'>', 0, "$prefix: kv has tombstones");
	$_->stop for @nodes;
}

# A partition: the first node and the other two stop pulling from each
# other (their peer entries removed) while all three write the same keys,
# then the link is restored and the two sides must reconcile, each key
# ending with its newest write.
sub partition_under_load
{
	my ($prefix) = @_;
	my ($x, @rest) = @nodes;
	for my $y (@rest)
	{
		sql($x, 'SELECT registry.remove_peer(' . quote_literal($y->name) . ')');
		sql($y, 'SELECT registry.remove_peer(' . quote_literal($x->name) . ')');
	}
	my %load = map { $_->name => start_load($_, 5) } @nodes;
	for my $name (sort keys %load)
	{
		is(finish_load($load{$name}), 0,
			"$prefix partition: pgbench on $name: no failed transaction")
		  or diag(${ $load{$name}{err} });
	}
	# Last writer wins: each key must end with the newest (version, then
	# origin) of the states it has anywhere now.
	my %expect;
	for my $n (@nodes)
	{
		for my $t (qw(kv svc))
		{
			for my $line (split /\n/, versions_lines($n, $t))
			{
				my ($key, $version, $origin, $deleted) = split /\|/, $line;
				my $e = $expect{"$t $key"};
				$expect{"$t $key"} = [ $version, $origin, $deleted ]
				  if !$e
				  || $version > $e->[0]
				  || ($version == $e->[0] && $origin gt $e->[1]);
			}
		}
	}
	for my $y (@rest)
	{
		add_peer($x, $y);
		add_peer($y, $x);
	}
	wait_converged(\@nodes, [ 'kv', 'svc' ],
		"$prefix partition: healed, the two sides agree on every row, version and tombstone"
	);
	check_verify(\@nodes, "$prefix partition");
	my %got;
	for my $t (qw(kv svc))
	{
		for my $line (split /\n/, versions_lines($x, $t))
		{
			my ($key, @state) = split /\|/, $line;
			$got{"$t $key"} = join('|', @state);
		}
	}
	my @wrong = grep { ($got{$_} // 'missing') ne join('|', @{ $expect{$_} }) }
	  sort keys %expect;
	is(scalar(@wrong), 0,
		"$prefix partition: every key ended with its newest write (of "
		  . scalar(keys %expect) . ' keys)')
	  or diag(join("\n",
		map { "$_: got " . ($got{$_} // 'missing') . ', expected ' . join('|', @{ $expect{$_} }) }
		  @wrong[ 0 .. ($#wrong < 9 ? $#wrong : 9) ]));
	is(scalar(keys %got), scalar(keys %expect),
		"$prefix partition: no key appeared from nowhere");
}

# key|version|origin|deleted of every key of table $t on $node
sub versions_lines
{
	my ($node, $t) = @_;
	return sql($node,
		"SELECT key || '|' || version || '|' || origin || '|' || deleted FROM registry.versions('$t')"
	);
}

# A fourth, empty node joins the mesh while every node writes, itself
# included: it pulls kv whole (20,000 more rows; its keys listed in
# registry.row_keys at the end if the table was still empty when the pull
# began, as they come if its own writes got there first) while its own
# writes and the others' go on, then all four must agree.
sub join_under_load
{
	my ($prefix) = @_;
	sql($nodes[0],
		q{INSERT INTO kv SELECT g, 'bulk' FROM generate_series(1001, 21000) g});
	wait_converged(\@nodes, ['kv'], "$prefix: 20,000 more rows everywhere");

	my %load = map { $_->name => start_load($_, 8) } @nodes;
	my $nd = new_node("${prefix}_d");
	create_table([$nd], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
	create_table([$nd], 'svc',
		'CREATE TABLE svc (name text, zone int, endpoints jsonb, PRIMARY KEY (name, zone))'
	);
	for my $n (@nodes)
	{
		add_peer($nd, $n);
		add_peer($n, $nd);
	}
	$load{ $nd->name } = start_load($nd, 6);
	for my $name (sort keys %load)
	{
		is(finish_load($load{$name}), 0,
			"$prefix join: pgbench on $name: no failed transaction")
		  or diag(${ $load{$name}{err} });
	}
	push @nodes, $nd;
	wait_converged(\@nodes, [ 'kv', 'svc' ],
		"$prefix join: the new node and the three agree on every row, version and tombstone"
	);
	check_verify(\@nodes, "$prefix join");
	cmp_ok(sql($nd, 'SELECT count(*) FROM kv'), '>', 20000,
		"$prefix join: ${prefix}_d has the bulk rows");
}

# With the default sizes: peers follow each other's change logs.
run_mesh('chaos', '', join => 1);

# With every shared structure at its minimum: a change log of 16 entries,
# which peers fall out of all the time and then repair by comparing
# digests, under the same writes; 16 acceptors, evicted all the time; 16
# digest buckets, each holding many keys.
run_mesh('tiny', q{
registry.change_log_size = 16
registry.max_acceptors = 16
registry.digest_buckets = 16
});

done_testing();
