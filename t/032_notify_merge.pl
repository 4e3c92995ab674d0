# The notifier's merge window (registry.notify_delay): with 0, one
# registry_change notification per change as before; with 200 ms, a burst
# of 10,000 changes reaches a listener as a few notifications per table,
# whose counts, seq ranges, ops and keys add up exactly to the change log;
# the last change of a burst is notified by the window's close, not by a
# later change; a window's keys stop at the payload limit
# (keys_truncated); and a reload of the setting takes effect both ways.
#
#  a. notify_delay = 0: one change's payload, field by field
#  e. ALTER SYSTEM + pg_reload_conf() to 200 ms: the next notifications
#     are merged ones
#  b. 10 transactions of 1,000 inserts into a, each with 5 updates of b,
#     100 ms apart: at most elapsed/200ms + 1 notifications per table;
#     their counts sum to the change log's; ranges disjoint, covering
#     exactly the table's seqs; ops and keys as the log says;
#     registry.node's counters
#  c. one INSERT after a quiet period: a notification with count 1 within
#     a few seconds
#  d. 20 keys of 1000 bytes: keys_truncated, the payload under 8000 bytes;
#     a TRUNCATE: "resync" in ops
#  e. back to 0 by a reload: one notification per change again
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(usleep time);
use RegistryMesh;
use LeaseTest;

my $node = new_node(
	'nt', conf => q{
registry.max_key_length = 4096
registry.change_log_size = 65536
});

sql($node, q{
CREATE TABLE a (id int PRIMARY KEY, v int);
CREATE TABLE b (k text PRIMARY KEY, v int);
CREATE TABLE probe (id int PRIMARY KEY);
CREATE TABLE longk (k text PRIMARY KEY);
CREATE TABLE r (id int PRIMARY KEY);
SELECT registry.replicate('a');
SELECT registry.replicate('b');
SELECT registry.replicate('probe');
SELECT registry.replicate('longk');
SELECT registry.replicate('r');
});

my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN registry_change');

my (@notes, @bad);

# Read the notifications that have arrived (psql prints them after each
# query it runs), each with its raw payload in _raw.
sub pump
{
	my $out = $listener->query_safe('SELECT 1');
	while ($out =~
		/^Asynchronous notification "registry_change" with payload "(.*)" received from server process with PID \d+\.\r?$/mg
	  )
	{
		my $raw = $1;
		my $p = eval { decode_json($raw) };
		if (!defined $p)
		{
			push @bad, $raw;
			next;
		}
		$p->{_raw} = $raw;
		push @notes, $p;
	}
}

# Poll until $cond holds or $limit seconds (default: the test timeout)
# have passed; no fixed sleeps.
sub wait_for
{
	my ($cond, $limit) = @_;
	my $deadline = time() + ($limit // $PostgreSQL::Test::Utils::timeout_default);
	for (;;)
	{
		pump();
		return 1 if $cond->();
		return 0 if time() > $deadline;
		usleep(20_000);
	}
}

sub last_seq { return sql($node, 'SELECT last_seq FROM registry.node'); }

sub of_table
{
	my ($table, $after) = @_;
	return grep {
		($_->{table} // '') eq $table
		  && ($_->{seq} // $_->{first_seq} // 0) > $after
	} @notes;
}

sub merged { return exists $_[0]->{count}; }

# Everything published is notified and the notifications have arrived.
sub quiet
{
	my $ok = $node->poll_query_until('postgres',
		'SELECT notified_seq = last_seq FROM registry.node');
	pump();
	return $ok;
}

# Set registry.notify_delay by ALTER SYSTEM and a reload, then write probe
# rows until one is notified in the new form (merged or not): the worker
# has the new setting from then on.
my $probe_id = 0;

sub set_delay
{
	my ($delay, $want_merged) = @_;
	sql($node, "ALTER SYSTEM SET registry.notify_delay = '$delay'");
	sql($node, 'SELECT pg_reload_conf()');
	for my $attempt (1 .. 50)
	{
		$probe_id++;
		sql($node, "INSERT INTO probe VALUES ($probe_id)");
		my $seq = last_seq();
		my $p;
		wait_for(
			sub {
				($p) = grep {
					($_->{table} // '') eq 'public.probe'
					  && ($_->{seq} // $_->{last_seq} // 0) >= $seq
				} @notes;
				return defined $p;
			});
		return 1 if defined $p && (merged($p) ? 1 : 0) == $want_merged;
	}
	return 0;
}

# The change log of this test's tables, read once (the view computes
# key_values per row).
sub copy_log
{
	my ($after) = @_;
	sql($node, qq{
DROP TABLE IF EXISTS log_copy;
CREATE TABLE log_copy AS
	SELECT seq, table_name, key, op, reason FROM registry.change_log WHERE seq > $after;
});
}

# Compare the merged notifications of $table (seq ranges above $after)
# with log_copy: each range's first and last seq are the table's, its
# count and ops are the table's entries in the range, its keys the first
# distinct keys in seq order (all of them unless keys_truncated); ranges
# are disjoint and, as the counts add up, cover every entry of the table.
# Returns the problems found.
sub check_windows
{
	my ($table, @ws) = @_;
	my @problems;
	my $prev_last = 0;
	for my $w (sort { $a->{first_seq} <=> $b->{first_seq} } @ws)
	{
		my $label = "$table [$w->{first_seq}, $w->{last_seq}]";
		my $log = decode_json(
			sql($node, qq{
SELECT json_build_object(
	'count', count(*), 'first', min(seq), 'last', max(seq),
	'insert', count(*) FILTER (WHERE op = 'insert'),
	'update', count(*) FILTER (WHERE op = 'update'),
	'delete', count(*) FILTER (WHERE op = 'delete'),
	'resync', count(*) FILTER (WHERE op = 'resync'),
	'keys', (SELECT coalesce(json_agg(key ORDER BY s), '[]') FROM
			  (SELECT key, min(seq) s FROM log_copy
			   WHERE table_name = '$table' AND op <> 'resync'
				 AND seq BETWEEN $w->{first_seq} AND $w->{last_seq}
			   GROUP BY key) k))
FROM log_copy
WHERE table_name = '$table' AND seq BETWEEN $w->{first_seq} AND $w->{last_seq}}));
		push @problems, "$label: overlaps the previous range (ending at $prev_last)"
		  if $w->{first_seq} <= $prev_last;
		$prev_last = $w->{last_seq};
		push @problems, "$label: the log's entries of the table span [" . ($log->{first} // 'none') . ', ' . ($log->{last} // 'none') . ']'
		  if ($log->{first} // -1) != $w->{first_seq} || ($log->{last} // -1) != $w->{last_seq};
		push @problems, "$label: count $w->{count}, the log has $log->{count}"
		  if $w->{count} != $log->{count};
		for my $op (qw(insert update delete))
		{
			push @problems, "$label: ops.$op " . ($w->{ops}{$op} // 'absent') . ", the log has $log->{$op}"
			  if ($w->{ops}{$op} // -1) != $log->{$op};
		}
		push @problems, "$label: ops.resync " . ($w->{ops}{resync} // 'absent') . ", the log has $log->{resync}"
		  if ($log->{resync} ? ($w->{ops}{resync} // -1) != $log->{resync} : exists $w->{ops}{resync});
		push @problems, "$label: \"expired\" present" if exists $w->{expired};
		my @keys = @{ $w->{keys} };
		my @want = @{ $log->{keys} };
		my $n = scalar(@keys);
		push @problems, "$label: keys are not the first $n distinct keys of the log in seq order"
		  if $n > @want || join("\0", @keys) ne join("\0", @want[ 0 .. $n - 1 ]);
		push @problems, "$label: keys_truncated is " . ($w->{keys_truncated} ? 'true' : 'false') . " with $n of " . scalar(@want) . ' keys'
		  if ($w->{keys_truncated} ? 1 : 0) != ($n < @want ? 1 : 0);
		push @problems, "$label: payload of " . length($w->{_raw}) . ' bytes'
		  if length($w->{_raw}) >= 8000;
	}
	return @problems;
}

# ---------------------------------------------------------------------
# a. notify_delay = 0: one notification per change, as before
# ---------------------------------------------------------------------
is(sql($node, 'SHOW registry.notify_delay'), '0', 'registry.notify_delay defaults to 0');
sql($node, q{INSERT INTO b VALUES ('k0', 1)});
my $s = last_seq();
ok(wait_for(sub { scalar(of_table('public.b', 0)) >= 1 }), 'delay 0: the insert was notified');
my ($k0) = of_table('public.b', 0);
my $logged = sql($node, "SELECT version || '|' || origin FROM registry.change_log WHERE seq = $s");
is( join('|', map { $_ // '<null>' } $k0->{seq}, $k0->{table}, $k0->{key}, @{ $k0->{key_values} },
		$k0->{op}, $k0->{version}, $k0->{origin}, exists $k0->{count} ? 'count' : 'no count'),
	"$s|public.b|k0|k0|insert|$logged|no count",
	'delay 0: the payload of one change (seq, table, key, key_values, op, version, origin)');
ok(quiet(), 'delay 0: notifier caught up');

# ---------------------------------------------------------------------
# e. a reload to 200 ms takes effect
# ---------------------------------------------------------------------
ok(set_delay('200ms', 1), 'after ALTER SYSTEM and pg_reload_conf(), notifications are merged');
is(sql($node, 'SHOW registry.notify_delay'), '200ms', 'registry.notify_delay is 200ms');
ok(quiet(), 'delay 200ms: notifier caught up before the burst');

# ---------------------------------------------------------------------
# b. a burst of 10,000 changes to a and 55 to b in about one second
# ---------------------------------------------------------------------
my $seq0 = last_seq();
my $c0 = counters($node);
my $n0 = scalar(@notes);
my @rounds;
for my $r (0 .. 9)
{
	my ($lo, $hi) = ($r * 1000 + 1, ($r + 1) * 1000);
	my $round = "INSERT INTO a SELECT g, $r FROM generate_series($lo, $hi) g;\n";
	$round .= "INSERT INTO b SELECT 'b' || i, 0 FROM generate_series(1, 5) i;\n" if $r == 0;
	$round .= "UPDATE b SET v = v + 1 WHERE k LIKE 'b_';\n";
	push @rounds, $round;
}
my $t0 = time();
sql($node, join("SELECT pg_sleep(0.1);\n", @rounds));
my $elapsed = time() - $t0;
my $seq1 = last_seq();
my %total = map {
	$_ => sql($node,
		"SELECT count(*) FROM registry.change_log WHERE table_name = '$_' AND seq > $seq0")
} ('public.a', 'public.b');
is($total{'public.a'}, 10000, 'the change log holds 10,000 changes of a');
is($total{'public.b'}, 55, 'and 55 of b');
is($seq1 - $seq0, 10055, 'and nothing else');

my $sum = sub {
	my $c = 0;
	$c += $_->{count} // 0 for of_table($_[0], $seq0);
	return $c;
};
ok(wait_for(sub { $sum->('public.a') >= 10000 && $sum->('public.b') >= 55 }),
	'the burst was notified');
ok(quiet(), 'notifier caught up after the burst');
copy_log($seq0);

my $bound = int($elapsed * 1000 / 200) + 1;
note(sprintf('burst: %.3f s, at most %d notifications per table', $elapsed, $bound));
for my $t ('public.a', 'public.b')
{
	my @ws = of_table($t, $seq0);
	note("$t: " . scalar(@ws) . ' notifications, counts ' . join(',', map { $_->{count} // '?' } @ws));
	is(scalar(grep { !merged($_) } @ws), 0, "$t: every notification is a merged one");
	cmp_ok(scalar(@ws), '<=', $bound,
		"$t: at most elapsed/200ms + 1 = $bound notifications");
	is($sum->($t), $total{$t}, "$t: the counts sum to exactly the $total{$t} changes in the log");
	is(join("\n", check_windows($t, @ws)), '',
		"$t: seq ranges disjoint, each with the log's first and last seq, count, ops and keys");
}
my @bw = of_table('public.b', $seq0);
is(join(',', map { scalar(@{ $_->{keys} }) } @bw), join(',', map { 5 } @bw),
	'b: each notification lists its 5 keys once (updated up to 11 times each)');
is(join(',', @{ $bw[0]{keys} }), 'b1,b2,b3,b4,b5', "b: first-seen order");

my $c1 = counters($node);
my $sent = scalar(@notes) - $n0;
is($c1->{notifications_sent} - $c0->{notifications_sent}, $sent,
	"registry.node.notifications_sent grew by the $sent notifications received");
is($c1->{notified_seq}, $seq1, 'registry.node.notified_seq is the last seq');
is($c1->{notifications_lost}, $c0->{notifications_lost}, 'no change was lost');
is(scalar(@bad), 0, 'every payload is valid JSON');

# ---------------------------------------------------------------------
# c. the last change of a burst: one INSERT after a quiet period
# ---------------------------------------------------------------------
# (the idle worker now sleeps until woken by a commit; no window is open)
usleep(500_000);
sql($node, q{INSERT INTO b VALUES ('last', 1)});
my $lone = last_seq();
my $t1 = time();
my $lone_note;
ok( wait_for(
		sub {
			($lone_note) = grep { ($_->{last_seq} // 0) == $lone } of_table('public.b', $lone - 1);
			return defined $lone_note;
		},
		5),
	'a lone insert is notified within 5 s, with no later change');
note(sprintf('lone insert notified after %.3f s', time() - $t1));
is( join('|', map { $_ // '<null>' } $lone_note->{count}, $lone_note->{first_seq},
		$lone_note->{last_seq}, @{ $lone_note->{keys} // [] },
		$lone_note->{ops}{insert}, $lone_note->{ops}{update}, $lone_note->{ops}{delete},
		$lone_note->{keys_truncated} ? 'truncated' : 'complete'),
	"1|$lone|$lone|last|1|0|0|complete",
	'a lone insert: count 1, its seq as first and last, its key, ops insert 1');
ok(quiet(), 'notifier caught up');

# ---------------------------------------------------------------------
# d. long keys: the list stops at the payload limit; a TRUNCATE's resync
# ---------------------------------------------------------------------
my $seq2 = last_seq();
my $trunc0 = counters($node)->{notifications_truncated};
sql($node, q{INSERT INTO longk SELECT repeat(chr(96 + i), 1000) FROM generate_series(1, 20) i});
ok(wait_for(sub { scalar(of_table('public.longk', $seq2)) >= 1 }), 'long keys: notified');
my @lw = of_table('public.longk', $seq2);
is(scalar(@lw), 1, 'long keys: one notification for one transaction');
my $lk = $lw[0];
is(join('|', $lk->{count}, $lk->{keys_truncated} ? 'true' : 'false'), '20|true',
	'long keys: count 20, keys_truncated true');
my $nk = scalar(@{ $lk->{keys} });
ok($nk >= 5 && $nk < 20, "long keys: the first $nk keys fit");
cmp_ok(length($lk->{_raw}), '<', 8000, 'long keys: the payload is under 8000 bytes');
cmp_ok(length($lk->{_raw}), '>', 8000 - 1100, 'long keys: and close to it (as many keys as fit)');
ok($node->poll_query_until('postgres',
		"SELECT notifications_truncated = $trunc0 + 1 FROM registry.node"),
	'registry.node.notifications_truncated grew by one');

sql($node, q{INSERT INTO r VALUES (1), (2), (3)});
sql($node, q{TRUNCATE r});
ok( wait_for(
		sub {
			my $c = 0;
			$c += $_->{count} for of_table('public.r', $seq2);
			return $c >= 4;
		}),
	'insert and TRUNCATE: notified');
ok(quiet(), 'notifier caught up');
copy_log($seq2);
my @rw = of_table('public.r', $seq2);
my $resyncs = 0;
$resyncs += $_->{ops}{resync} // 0 for @rw;
is($resyncs, 1, 'TRUNCATE: "resync": 1 in the ops of its notification');
is(join("\n", check_windows('public.r', @rw), check_windows('public.longk', @lw)), '',
	'long keys and TRUNCATE: counts, ops and keys as in the log');

# ---------------------------------------------------------------------
# e. back to 0 by a reload: one notification per change again
# ---------------------------------------------------------------------
ok(set_delay('0', 0), 'after a reload to 0, notifications are per change again');
ok(quiet(), 'notifier caught up');
my $seq3 = last_seq();
sql($node, "INSERT INTO b VALUES ('e$_', $_)") for 1 .. 3;
ok(wait_for(sub { scalar(of_table('public.b', $seq3)) >= 3 }), 'delay 0 again: 3 inserts notified');
ok(quiet(), 'notifier caught up');
is( join(',', map { join(':', $_->{seq} // '?', $_->{key} // '?', $_->{op} // '?', exists $_->{count} ? 'count' : '') }
		of_table('public.b', $seq3)),
	join(',', map { ($seq3 + $_) . ":e$_:insert:" } 1 .. 3),
	'delay 0 again: one notification per change, with seq and key');
is(scalar(@bad), 0, 'every payload was valid JSON');

$listener->quit;
$node->stop;
done_testing();
