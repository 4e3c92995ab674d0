# Helpers for the multi-node TAP tests (t/01*.pl): build nodes running the
# registry, connect them as peers, and wait (by polling with a time limit,
# never by sleeping) until a set of nodes holds identical data.
package RegistryMesh;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use Exporter 'import';

our @EXPORT = qw(
  new_node start_registry wait_ready sql add_peer full_mesh
  create_table table_rows table_state versions_state
  wait_converged sync_until check_verify peer_status poll_until
  quote_literal spaced_commits serving_pid voluntary_switches
);

# SQL string literal
sub quote_literal
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

sub sql
{
	my ($node, $query) = @_;
	return $node->safe_psql('postgres', $query);
}

# A node running the registry, named $name (also its registry.node_name),
# with fast sync and anti-entropy.  Extra configuration lines in $opts{conf}.
sub new_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf(
		'postgresql.conf', qq{
shared_preload_libraries = 'registry'
registry.node_name = '$name'
registry.antientropy_interval = '1s'
registry.sync_interval = '200ms'
log_min_messages = info
} . ($opts{conf} // ''));
	$node->start;
	start_registry($node);
	return $node;
}

sub start_registry
{
	my ($node) = @_;
	sql($node, 'CREATE EXTENSION registry');
	wait_ready($node);
}

sub wait_ready
{
	my ($node) = @_;
	$node->poll_query_until('postgres',
		"SELECT state = 'ready' FROM registry.node")
	  or die 'node ' . $node->name . ' did not become ready';
}

# Create a table with $ddl on every node of @$nodes and register it.
sub create_table
{
	my ($nodes, $table, $ddl) = @_;
	for my $n (@$nodes)
	{
		sql($n, "$ddl; SELECT registry.replicate(" . quote_literal($table) . ')');
	}
}

# $x pulls from $y
sub add_peer
{
	my ($x, $y) = @_;
	sql($x,
		    'SELECT registry.add_peer('
		  . quote_literal($y->name) . ', '
		  . quote_literal($y->connstr('postgres'))
		  . ')');
}

sub full_mesh
{
	my @nodes = @_;
	for my $x (@nodes)
	{
		for my $y (@nodes)
		{
			add_peer($x, $y) unless $x == $y;
		}
	}
}

# Every row of a table, with its version and origin, in a stable order.
sub table_rows
{
	my ($node, $table) = @_;
	return sql($node,
		"SELECT coalesce(string_agg(row_to_json(t)::text, E'\\n' ORDER BY row_to_json(t)::text COLLATE \"C\"), '') FROM $table t"
	);
}

# count and digest of every row, for comparing big tables
sub table_state
{
	my ($node, $table) = @_;
	return sql($node,
		"SELECT count(*) || ' rows ' || md5(coalesce(string_agg(row_to_json(t)::text, ',' ORDER BY row_to_json(t)::text COLLATE \"C\"), '')) FROM $table t"
	);
}

# every key's version, origin and deletedness (tombstones included)
sub versions_state
{
	my ($node, $table) = @_;
	return sql($node,
		"SELECT count(*) || ' keys ' || md5(coalesce(string_agg(format('%s|%s|%s|%s', key, version, origin, deleted), ',' ORDER BY key COLLATE \"C\"), '')) FROM registry.versions('$table')"
	);
}

# Poll $cond (a sub returning true when done) every 100 ms until the
# default test timeout.
sub poll_until
{
	my ($cond) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	for (;;)
	{
		return 1 if $cond->();
		return 0 if time() > $deadline;
		usleep(100_000);
	}
}

# Ask each node for a complete sync round with those of its peers that are
# in @$nodes; true if each said it has everything they had.
sub sync_round
{
	my ($nodes) = @_;
	my $names = join(',', map { quote_literal($_->name) } @$nodes);
	my $all = 1;
	for my $n (@$nodes)
	{
		my $r = sql($n,
			"SELECT coalesce(bool_and(registry.sync_now(name, '20s')), true) FROM registry.peers WHERE name IN ($names)"
		);
		$all = 0 unless $r eq 't';
	}
	return $all;
}

# Run sync rounds on @$nodes until every node's sync_now() is true and the
# contents of every table of @$tables (rows with their versions, and with
# $opts{tombstones}, the default, every key's version including tombstones)
# are identical on all of them.  With $opts{sync_ok} => 0, sync_now() may
# return false (some other table cannot be synced): only the contents of
# @$tables count, after at least one complete round.  Emits one test result.
sub wait_converged
{
	my ($nodes, $tables, $label, %opts) = @_;
	my $tomb = $opts{tombstones} // 1;
	my $need_sync = $opts{sync_ok} // 1;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	my ($synced, %state);
	for (;;)
	{
		$synced = sync_round($nodes);
		my $same = 1;
		%state = ();
		for my $t (@$tables)
		{
			for my $n (@$nodes)
			{
				$state{$t}{ $n->name } = table_state($n, $t)
				  . ($tomb ? ' / ' . versions_state($n, $t) : '');
			}
			my %distinct = map { $_ => 1 } values %{ $state{$t} };
			$same = 0 if keys %distinct > 1;
		}
		last if ($synced || !$need_sync) && $same;
		if (time() > $deadline)
		{
			diag("not converged: sync_now all true: $synced");
			for my $t (@$tables)
			{
				diag("  $t on $_: $state{$t}{$_}") for sort keys %{ $state{$t} };
			}
			for my $n (@$nodes)
			{
				diag('  peer_status on ' . $n->name . ":\n"
					  . sql($n,
						'SELECT peer, state, errors, rows_applied, rows_refused_purged, versions_refused, needs_resync, last_error FROM registry.peer_status'
					  ));
			}
			return ok(0, $label);
		}
		usleep(50_000);
	}
	return ok(1, $label);
}

# registry.verify() reports nothing on every node
sub check_verify
{
	my ($nodes, $label) = @_;
	for my $n (@$nodes)
	{
		is(sql($n, 'SELECT * FROM registry.verify()'),
			'', "$label: verify() reports no inconsistency on " . $n->name);
	}
}

# columns of registry.peer_status for one peer, '|'-separated
sub peer_status
{
	my ($node, $peer, $cols) = @_;
	return sql($node,
		"SELECT $cols FROM registry.peer_status WHERE peer = "
		  . quote_literal($peer));
}

# $n single-row commits on $node, $pause_s seconds apart, each setting kv's
# row 1 to 'v1'..'v$n' (so that each reaches a peer as a change of its
# own, not in one batch with others).
sub spaced_commits
{
	my ($node, $n, $pause_s) = @_;
	sql($node, qq{CREATE OR REPLACE PROCEDURE spaced_commits() LANGUAGE plpgsql AS \$\$
BEGIN
  FOR i IN 1..$n LOOP
    UPDATE kv SET val = 'v' || i WHERE id = 1;
    COMMIT;
    PERFORM pg_sleep($pause_s);
  END LOOP;
END \$\$});
	sql($node, 'CALL spaced_commits()');
}

# Sync rounds until $cond->() holds (or the time limit); true if it held.
sub sync_until
{
	my ($nodes, $cond) = @_;
	return poll_until(
		sub {
			sync_round($nodes);
			return $cond->();
		});
}

# The pid of the backend on $node serving the requests of peer node
# $peer's sync worker (its application_name).
sub serving_pid
{
	my ($node, $peer) = @_;
	return sql($node,
		"SELECT pid FROM pg_stat_activity WHERE application_name = "
		  . quote_literal("registry sync $peer")
		  . " AND backend_type = 'client backend'");
}

# How often a process has slept so far (Linux /proc): its voluntary
# context switches.
sub voluntary_switches
{
	my ($pid) = @_;
	my $status = PostgreSQL::Test::Utils::slurp_file("/proc/$pid/status");
	return $status =~ /^voluntary_ctxt_switches:\s+(\d+)/m ? $1 : die "no count for $pid";
}

1;
