# Helpers of the lease tests (t/029, t/030, t/031): table contents as
# "key|origin" lines, registry.node as a hash, change-log entries of a key,
# error output with SQLSTATEs, notifications read from a listening
# BackgroundPsql session.  The tables they read have a text key column k.
package LeaseTest;

use strict;
use warnings;
use JSON::PP;
use Test::More;
use RegistryMesh;
use Exporter 'import';

our @EXPORT = qw(
  psql_both psql_error rows_of want_lines rows_are expect_rows counters
  log_of read_notifications note_is
);

# The output and error output of $query (SQLSTATEs shown), without dying
sub psql_both
{
	my ($node, $query) = @_;
	my ($ret, $stdout, $stderr) = $node->psql('postgres', $query,
		extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	return ($stdout, $stderr);
}

sub psql_error
{
	my ($node, $query) = @_;
	return (psql_both($node, $query))[1];
}

# "key|origin" of every row of $table, in key order
sub rows_of
{
	my ($node, $table) = @_;
	return sql($node,
		"SELECT coalesce(string_agg(k || '|' || registry_origin, E'\\n' ORDER BY k COLLATE \"C\"), '') FROM $table");
}

# %$want (key => origin) as rows_of() prints it
sub want_lines
{
	my ($want) = @_;
	return join("\n", map { "$_|$want->{$_}" } sort keys %$want);
}

# Every node holds exactly %$want in $table now.
sub rows_are
{
	my ($nodes, $table, $want, $label) = @_;
	is(rows_of($_, $table), want_lines($want), "$label: $table on " . $_->name)
	  for @$nodes;
}

# Wait (with the default time limit) until every node holds exactly %$want
# in $table, then check it on each.
sub expect_rows
{
	my ($nodes, $table, $want, $label) = @_;
	my $exp = want_lines($want);
	poll_until(sub { !grep { rows_of($_, $table) ne $exp } @$nodes });
	rows_are($nodes, $table, $want, $label);
}

# registry.node as a hash
sub counters
{
	my ($node) = @_;
	return decode_json(sql($node, 'SELECT row_to_json(n)::text FROM registry.node n'));
}

# "op|reason|origin" of one key's change-log entries, in seq order
sub log_of
{
	my ($node, $table, $key) = @_;
	return sql($node,
		"SELECT string_agg(op || '|' || coalesce(reason, '') || '|' || origin, ',' ORDER BY seq) FROM registry.change_log WHERE table_name = 'public.$table' AND key = "
		  . quote_literal($key));
}

# The registry_change payloads that reached a listening BackgroundPsql
# session since the last call (psql prints them after each query it runs).
sub read_notifications
{
	my ($session) = @_;
	my $o = $session->query_safe('SELECT 1');
	my @got;
	while ($o =~
		/^Asynchronous notification "registry_change" with payload "(.*)" received from server process with PID \d+\.\r?$/mg
	  )
	{
		my $p = eval { decode_json($1) };
		push @got, $p if $p;
	}
	return @got;
}

sub note_is
{
	my ($p, $table, $key, $op) = @_;
	return ($p->{table} // '') eq $table
	  && ($p->{key} // '') eq $key
	  && ($p->{op} // '') eq $op;
}

1;
