# Helpers of the client-API tests (t/034_watch.pl, t/035_pgbouncer.pl):
# a psql client driven without blocking (so that many can wait in
# CALL registry.watch at once), a client of registry.list/registry.watch
# that rebuilds the table from the listing and the changes it is given,
# and the checks of what it saw against registry.change_log and the table.
# The tables these tests use have one text key column k, so a row's key
# text is k.
package WatchCheck;

use strict;
use warnings;
use IPC::Run;
use JSON::PP;
use Test::More;
use Time::HiRes qw(usleep time);
use PostgreSQL::Test::Utils;
use RegistryMesh ();
use Exporter 'import';

our @EXPORT = qw(canon jdecode log_json table_json rebuild_rows check_seen check_listing);

my $json = JSON::PP->new->canonical->allow_nonref;
sub canon   { return $json->encode($_[0]); }
sub jdecode { return $json->decode($_[0]); }

# registry.change_log entries with $from < seq <= $to (and $where), as the
# list of hashes a watch would return for them (without "row")
sub log_json
{
	my ($node, $from, $to, $where) = @_;
	$where = defined $where ? "AND ($where)" : '';
	my $out = $node->safe_psql('postgres', qq{
		SELECT coalesce(json_agg(json_build_object('seq', seq, 'table', table_name,
			'key', key, 'op', op, 'version', version::text, 'origin', origin,
			'reason', reason) ORDER BY seq), '[]')
		FROM registry.change_log WHERE seq > $from AND seq <= $to $where});
	return $json->decode($out);
}

# the rows of $table as { k => canonical to_jsonb(row) }
sub table_json
{
	my ($node, $table) = @_;
	my $out = $node->safe_psql('postgres',
		"SELECT coalesce(json_object_agg(k, to_jsonb(t)), '{}') FROM $table t");
	my $h = $json->decode($out);
	return { map { $_ => canon($h->{$_}) } keys %$h };
}

# Compare what a client saw (@$seen, the changes in the order watch returned
# them) with the change log after $from up to $to: every seq once, in order,
# same table, key, op, version, origin, reason.  Emits one test.
sub check_seen
{
	my ($node, $label, $seen, $from, $to, $where) = @_;
	my $log = log_json($node, $from, $to, $where);
	my @diff;
	my $n = @$log > @$seen ? @$log : @$seen;
	for my $i (0 .. $n - 1)
	{
		my ($w, $g) = ($log->[$i], $seen->[$i]);
		my $ws = defined $w ? canon($w) : '(none)';
		my $gs = '(none)';
		if (defined $g)
		{
			my %c = %$g;
			delete $c{row};
			$gs = canon(\%c);
		}
		push @diff, "#$i: change log $ws, watch $gs" if $ws ne $gs;
		last if @diff >= 5;
	}
	my $ok = is(scalar(@diff), 0,
		"$label: the changes seen are exactly the change log's "
		  . scalar(@$log) . " entries after seq $from (each once, in order, same content)");
	diag(join("\n", @diff)) if @diff;
	return $ok;
}

# The listing of $w (a Watcher) holds exactly the state of $table at its
# position: for every key, the last change-log entry with seq <= the
# position; keys whose last such entry is a delete (or that have none) are
# not listed; a listed key has that entry's version and origin.  Needs the
# whole history in the ring (first_seq 1).  Emits one test.
sub check_listing
{
	my ($node, $label, $w, $table) = @_;
	my $out = $node->safe_psql('postgres', qq{
		SELECT coalesce(json_object_agg(key, version::text || '|' || coalesce(origin, 'NULL')), '{}')
		FROM (SELECT DISTINCT ON (key) key, op, version, origin FROM registry.change_log
			  WHERE table_name = '$table' AND seq <= $w->{list_seq} ORDER BY key, seq DESC) l
		WHERE op <> 'delete'});
	my $want = $json->decode($out);
	my $got = $w->{listed}{$table} // {};
	my @diff;
	for my $k (sort(keys %{ { %$want, %$got } }))
	{
		my ($a, $b) = ($want->{$k} // 'absent', $got->{$k} // 'absent');
		push @diff, "key $k: change log up to the position $a, listing $b" if $a ne $b;
	}
	my $ok = is(scalar(@diff), 0,
		"$label: the listing is exactly $table at seq $w->{list_seq} ("
		  . scalar(keys %$want) . ' live keys, each with the version and origin of its last change up to there)');
	diag(join("\n", @diff[ 0 .. ($#diff < 9 ? $#diff : 9) ])) if @diff;
	return $ok;
}

# ---------------------------------------------------------------------
# A psql process fed one command at a time without waiting for it.
# ---------------------------------------------------------------------
package WatchCheck::Client;

use IPC::Run;
use Time::HiRes qw(usleep time);

my $clients = 0;

# $cmd: the psql command line (array ref) up to its connection options
sub new
{
	my ($class, $psql, $connstr, $name) = @_;
	my $self = bless { in => '', out => '', err => '', n => 0,
		name => $name // ('client' . ++$clients) }, $class;
	$self->{h} = IPC::Run::start(
		[ $psql, '-XAtq', '-v', 'ON_ERROR_STOP=0', '-v', 'VERBOSITY=verbose', '-d', $connstr ],
		'<', \$self->{in}, '>', \$self->{out}, '2>', \$self->{err});
	return $self;
}

sub name { return $_[0]->{name}; }
sub busy { return defined $_[0]->{pending}; }

# send $sql; the answer is collected by poll()
sub send
{
	my ($self, $sql) = @_;
	die "$self->{name}: a command is still running" if $self->busy;
	my $n = ++$self->{n};
	$self->{pending} = $n;
	$self->{sent_at} = time();
	$self->{in} .= "$sql\n;\n\\echo '\@\@done $n\@\@'\n\\warn '\@\@done $n\@\@'\n";
	$self->{h}->pump_nb;
}

# If the pending command is done: (stdout, stderr, seconds it took); else ().
sub poll
{
	my ($self) = @_;
	return () unless $self->busy;
	$self->{h}->pump_nb if $self->{h}->pumpable;
	my $n = $self->{pending};
	my $m = qr/\@\@done $n\@\@\n/;
	if ($self->{out} =~ $m && $self->{err} =~ $m)
	{
		my ($o) = $self->{out} =~ /^(.*?)\@\@done $n\@\@\n/s;
		my ($e) = $self->{err} =~ /^(.*?)\@\@done $n\@\@\n/s;
		$self->{out} =~ s/^.*?\@\@done $n\@\@\n//s;
		$self->{err} =~ s/^.*?\@\@done $n\@\@\n//s;
		# psql prints the notifications it got after a command's output
		my $notes = $self->{keep_notifications} ? 0 : ($o =~ s/^Asynchronous notification .* received from server process with PID \d+\.\n//mg);
		$self->{notifications} += $notes if $notes;
		chomp $o;
		delete $self->{pending};
		return ($o, $e, time() - $self->{sent_at});
	}
	die "$self->{name}: psql exited: $self->{err}" unless $self->{h}->pumpable;
	return ();
}

# send $sql and wait (up to $timeout s, default the test default) for it
sub run
{
	my ($self, $sql, $timeout) = @_;
	$self->send($sql);
	my $deadline = time() + ($timeout // $PostgreSQL::Test::Utils::timeout_default);
	for (;;)
	{
		my @r = $self->poll;
		return @r if @r;
		die "$self->{name}: no answer to $sql within the time limit" if time() > $deadline;
		usleep(5_000);
	}
}

sub run_safe
{
	my ($self, $sql, $timeout) = @_;
	my ($o, $e) = $self->run($sql, $timeout);
	die "$self->{name}: $sql failed: $e" if $e ne '';
	return $o;
}

sub quit
{
	my ($self) = @_;
	return unless $self->{h};
	$self->{in} .= "\\q\n";
	my $h = delete $self->{h};
	eval { $h->finish; 1 } or $h->kill_kill;
}

# ---------------------------------------------------------------------
# A registry.list / registry.watch client on a Client.
# ---------------------------------------------------------------------
package WatchCheck::Watcher;

use JSON::PP;

# %opts: tables => "ARRAY['svc'::regclass]" (SQL text), key_prefix => 'a',
# max_changes, timeout => '1 s'
sub new
{
	my ($class, $client, %opts) = @_;
	return bless { c => $client, opts => \%opts, seen => [], rows => {},
		calls => 0, empty => 0 }, $class;
}

sub client { return $_[0]->{c}; }

sub _args
{
	my ($self, $for_watch) = @_;
	my $o = $self->{opts};
	my @a;
	push @a, "tables => $o->{tables}" if defined $o->{tables};
	push @a, 'key_prefix => ' . RegistryMesh::quote_literal($o->{key_prefix})
	  if defined $o->{key_prefix};
	if ($for_watch)
	{
		push @a, "max_changes => $o->{max_changes}" if defined $o->{max_changes};
		push @a, "timeout => '" . ($o->{timeout} // '1 s') . "'";
	}
	return @a;
}

sub list_sql
{
	my ($self) = @_;
	my $args = join(', ', $self->_args(0));
	return
	  "SELECT json_agg(to_jsonb(l) - 'o' ORDER BY o) FROM registry.list($args) WITH ORDINALITY "
	  . "AS l(epoch, seq, table_name, key, version, origin, \"row\", o)";
}

# take the answer of list_sql: position and rows
sub take_list
{
	my ($self, $out) = @_;
	my $l = WatchCheck::jdecode($out);
	die "registry.list returned nothing" unless ref $l eq 'ARRAY' && @$l;
	my $pos = shift @$l;
	$self->{list_errors} = [];
	push @{ $self->{list_errors} }, 'first row is not a position: ' . WatchCheck::canon($pos)
	  if grep { defined $pos->{$_} } qw(table_name key version origin row);
	$self->{epoch} = $pos->{epoch};
	$self->{seq} = $self->{list_seq} = $pos->{seq};
	$self->{rows} = {};
	$self->{listed} = {};
	for my $r (@$l)
	{
		push @{ $self->{list_errors} }, 'row with another position: ' . WatchCheck::canon($r)
		  if $r->{epoch} != $pos->{epoch} || $r->{seq} != $pos->{seq};
		push @{ $self->{list_errors} }, 'row without key or row: ' . WatchCheck::canon($r)
		  unless defined $r->{key} && defined $r->{row};
		$self->{rows}{"$r->{table_name}\t$r->{key}"} = WatchCheck::canon($r->{row});
		$self->{listed}{ $r->{table_name} }{ $r->{key} } = ($r->{version} // 'NULL') . '|' . ($r->{origin} // 'NULL');
	}
	return $self;
}

sub list
{
	my ($self) = @_;
	return $self->take_list($self->{c}->run_safe($self->list_sql));
}

sub watch_sql
{
	my ($self) = @_;
	return join(', ', "CALL registry.watch($self->{epoch}", "$self->{seq}", 'NULL',
		$self->_args(1)) . ')';
}

# take the answer of watch_sql: "epoch|seq|changes"
sub take_watch
{
	my ($self, $out) = @_;
	my ($e, $s, $ch) = split /\|/, $out, 3;
	die "watch answered '$out'" unless defined $ch;
	my $changes = WatchCheck::jdecode($ch);
	$self->{calls}++;
	$self->{empty}++ unless @$changes;
	push @{ $self->{errors} }, "watch changed the epoch from $self->{epoch} to $e"
	  if $e != $self->{epoch};
	push @{ $self->{errors} }, "watch moved the position back from $self->{seq} to $s"
	  if $s < $self->{seq};
	for my $c (@$changes)
	{
		push @{ $self->{seen} }, $c;
		if ($c->{op} eq 'resync')
		{
			$self->{resyncs}++;
			next;
		}
		my $k = "$c->{table}\t$c->{key}";
		if (defined $c->{row}) { $self->{rows}{$k} = WatchCheck::canon($c->{row}); }
		else { delete $self->{rows}{$k}; }
	}
	# The contract: seq is the last change returned.  The implementation
	# returns, with a filter, how far it looked past the last match
	# (FINDINGS.md); that skips only changes that do not match, which
	# check_seen verifies.  Never before the last change, and without a
	# filter, or when max_changes cut the answer, exactly the last change.
	if (@$changes && $changes->[-1]{seq} != $s)
	{
		my $o = $self->{opts};
		my $filtered = defined $o->{tables} || defined $o->{key_prefix};
		my $cut = @$changes >= ($o->{max_changes} // 1000);
		if ($s < $changes->[-1]{seq} || !$filtered || $cut)
		{
			push @{ $self->{errors} }, "watch returned $s but its last change is $changes->[-1]{seq}"
			  . ($cut ? ' (max_changes reached)' : '');
		}
		else { $self->{looked_past}++; }
	}
	$self->{seq} = $s;
	return $changes;
}

sub watch
{
	my ($self) = @_;
	return $self->take_watch($self->{c}->run_safe($self->watch_sql));
}

# the rows of $table it rebuilt, as { key => canonical row }
sub rows_of
{
	my ($self, $table) = @_;
	my %r;
	for my $k (keys %{ $self->{rows} })
	{
		my ($t, $key) = split /\t/, $k, 2;
		$r{$key} = $self->{rows}{$k} if $t eq $table;
	}
	return \%r;
}

sub errors { return @{ $_[0]->{list_errors} // [] }, @{ $_[0]->{errors} // [] }; }

package WatchCheck;

# rebuild_rows($watcher, 'public.svc') == table_json($node, 'svc')
sub rebuild_rows { return $_[0]->rows_of($_[1]); }

1;
