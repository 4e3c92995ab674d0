# registry_change notifications: one per committed key change, in seq
# order, matching the change log and the stored versions; keys too long
# for a NOTIFY payload are left out; changes lost from the ring are
# reported by one overflow notification; TRUNCATE gives one resync.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('notify');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'registry'
registry.node_name = 'nt'
registry.max_key_length = 4096
registry.change_log_size = 16
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION registry');
ok($node->poll_query_until('postgres', "SELECT state = 'ready' FROM registry.node"),
	'node ready');

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE TABLE kv (k text PRIMARY KEY, v int);
CREATE TABLE comp (name text, zone int, v int, PRIMARY KEY (name, zone));
CREATE TABLE bulk (id int PRIMARY KEY);
CREATE TABLE trunc_me (id int PRIMARY KEY);
SELECT registry.replicate('kv');
SELECT registry.replicate('comp');
SELECT registry.replicate('bulk');
SELECT registry.replicate('trunc_me');
});

# ---------------------------------------------------------------------
# the listening session
# ---------------------------------------------------------------------
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN registry_change');
$listener->query_safe('LISTEN registry_wakeup');

my (@changes, @wakeups, @bad_payloads);

# Read whatever notifications have arrived (psql prints them after each
# query it runs).
sub pump_notifications
{
	my $out = $listener->query_safe('SELECT 1');
	while ($out =~
		/^Asynchronous notification "(registry_change|registry_wakeup)" with payload "(.*)" received from server process with PID \d+\.\r?$/mg
	  )
	{
		my ($channel, $raw) = ($1, $2);
		my $p = eval { decode_json($raw) };
		if (!defined $p)
		{
			push @bad_payloads, $raw;
			next;
		}
		$p->{_raw} = $raw;
		push @{ $channel eq 'registry_change' ? \@changes : \@wakeups }, $p;
	}
}

# Poll until $cond holds; no fixed sleeps, only a timeout.
sub wait_for
{
	my ($cond) = @_;
	my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
	for (;;)
	{
		pump_notifications();
		return 1 if $cond->();
		return 0 if time() > $deadline;
		usleep(20_000);
	}
}

sub node_counter { return sql("SELECT $_[0] FROM registry.node"); }

# The change log row of a seq, as (table, key, op, version, origin).
sub log_entry
{
	my ($seq) = @_;
	return sql(
		qq{SELECT table_name, coalesce(key, '<null>'), op, version, origin
		   FROM registry.change_log WHERE seq = $seq});
}

sub show_key { return defined $_[0] ? $_[0] : '<null>'; }

# ---------------------------------------------------------------------
# 1. inserts, updates, deletes; single-column and composite keys
# ---------------------------------------------------------------------
my $seq0 = node_counter('last_seq');
is($seq0, '0', 'no change before the test writes');

my @expected = (
	[ 'public.kv',   'plain',          'insert' ],
	[ 'public.kv',   q{a b"c'd},       'insert' ],
	[ 'public.comp', q{("x y",1)},     'insert' ],
	[ 'public.comp', q{("q\"r",2)},    'insert' ],
	[ 'public.kv',   'plain',          'update' ],
	[ 'public.comp', q{("x y",1)},     'update' ],
	[ 'public.kv',   q{a b"c'd},       'delete' ],
	[ 'public.comp', q{("q\"r",2)},    'delete' ],
	[ 'public.kv',   'plain',          'update' ],
	[ 'public.trunc_me', '1',          'insert' ],
	[ 'public.trunc_me', '2',          'insert' ],
	[ 'public.trunc_me', '3',          'insert' ],);
sql(q{INSERT INTO kv VALUES ('plain', 1)});
sql(q{INSERT INTO kv VALUES ('a b"c''d', 2)});
sql(q{INSERT INTO comp VALUES ('x y', 1, 0), ('q"r', 2, 0)});
sql(q{UPDATE kv SET v = 10 WHERE k = 'plain'});
sql(q{UPDATE comp SET v = 1 WHERE name = 'x y'});
sql(q{DELETE FROM kv WHERE k = 'a b"c''d'});
sql(q{DELETE FROM comp WHERE name = 'q"r'});
# a transaction changing one key twice: one notification
sql(q{BEGIN; UPDATE kv SET v = 11 WHERE k = 'plain'; UPDATE kv SET v = 12 WHERE k = 'plain'; COMMIT;});
# rolled back work: no notification
sql(q{BEGIN; INSERT INTO kv VALUES ('never', 0); DELETE FROM kv WHERE k = 'plain'; ROLLBACK;});
sql(q{INSERT INTO trunc_me VALUES (1), (2), (3)});

my $n = scalar(@expected);
is(node_counter('last_seq'), $n, "$n changes were logged");
ok(wait_for(sub { @changes >= $n }), "$n change notifications arrived");
is(scalar(@changes), $n, "exactly $n change notifications");

my @got = map { join(' ', $_->{table} // '?', show_key($_->{key}), $_->{op} // '?') } @changes;
is_deeply(\@got, [ map { join(' ', @$_) } @expected ],
	'notifications name the table, key and op of each change, in commit order');
is_deeply([ map { $_->{seq} } @changes ], [ 1 .. $n ],
	'notification seqs are 1..n, increasing by one');
is(join(',', grep { ($_->{origin} // '') ne 'nt' } @changes), '',
	'every notification carries origin "nt"');
is(join(',', map { $_->{_raw} } grep { $_->{_raw} !~ /"version": "\d+"/ } @changes),
	'', 'versions are sent as JSON strings of digits');

my @mismatch;
for my $c (@changes)
{
	my $want = log_entry($c->{seq});
	my $have = join('|', $c->{table}, show_key($c->{key}), $c->{op}, $c->{version}, $c->{origin});
	push @mismatch, "seq $c->{seq}: notified $have, change log $want" if $want ne $have;
}
is(join("\n", @mismatch), '', 'each notification equals the change log entry of its seq');

# the last notification of each key carries the key's stored version
my %last;
$last{"$_->{table} $_->{key}"} = $_ for @changes;
my @stale;
for my $c (values %last)
{
	my $tbl = $c->{table};
	my $key = $c->{key};
	$key =~ s/'/''/g;
	my $stored = sql(
		qq{SELECT version || ' ' || deleted FROM registry.versions('$tbl') WHERE key = '$key'});
	my $want = $c->{version} . ' ' . ($c->{op} eq 'delete' ? 'true' : 'false');
	push @stale, "$c->{table} $c->{key}: notified $want, stored $stored" if $stored ne $want;
}
is(join("\n", @stale), '',
	'the last notification of every key has its stored version and deletedness');

ok(wait_for(sub { @wakeups && $wakeups[-1]{seq} == $n }),
	'a registry_wakeup notification reports the last seq');
is(join(',', grep { ($_->{node} // '') ne 'nt' } @wakeups), '',
	'wakeups name node "nt"');
# the counters move just after the notifications' transaction commits
ok(wait_for(sub { node_counter('notified_seq') == $n }),
	'registry.node.notified_seq caught up');

# ---------------------------------------------------------------------
# 2. keys near and over the payload limit
# ---------------------------------------------------------------------
my $truncated0 = node_counter('notifications_truncated');
is($truncated0, '0', 'no truncated notification so far');

# 3900 double quotes: 7800 bytes escaped, the payload still fits
sql(q{INSERT INTO kv VALUES (repeat('"', 3900), 4)});
ok(wait_for(sub { @changes >= $n + 1 }), 'notification for a 3900-byte key arrived');
my $c = $changes[$n];
is($c->{seq}, $n + 1, '3900-byte key: seq');
is(show_key($c->{key}), '"' x 3900, '3900-byte key: sent in full');
ok(!exists $c->{key_truncated}, '3900-byte key: not marked truncated');

# 4000 double quotes: 8000 bytes escaped, over NOTIFY's limit
sql(q{INSERT INTO kv VALUES (repeat('"', 4000), 5)});
is(sql(q{SELECT v FROM kv WHERE k = repeat('"', 4000)}), '5',
	'a row with a 4000-byte key was inserted');
ok(wait_for(sub { @changes >= $n + 2 }), 'notification for a 4000-byte key arrived');
$c = $changes[ $n + 1 ];
is($c->{seq}, $n + 2, '4000-byte key: seq');
ok(exists $c->{key} && !defined $c->{key}, '4000-byte key: "key" is null');
ok(defined $c->{key_truncated} && $c->{key_truncated} eq '1' && JSON::PP::is_bool($c->{key_truncated}),
	'4000-byte key: "key_truncated" is true');
is(join('|', $c->{table}, $c->{op}, $c->{origin}), 'public.kv|insert|nt',
	'4000-byte key: table, op and origin');
is( sql(
		qq{SELECT length(key) || ' ' || (key = repeat('"', 4000)) || ' ' || version
		   FROM registry.change_log WHERE seq = $c->{seq}}),
	"4000 true $c->{version}",
	'4000-byte key: the change log holds the full key and the notified version');
is( sql(q{SELECT version FROM registry.versions('kv') WHERE key = repeat('"', 4000)}),
	$c->{version}, '4000-byte key: notified version is the stored version');
ok(wait_for(sub { node_counter('notifications_truncated') == $truncated0 + 1 }),
	'registry.node.notifications_truncated increased by one');
is(scalar(@bad_payloads), 0, 'every payload so far is valid JSON');

# ---------------------------------------------------------------------
# 3. one transaction with more changes than the ring holds
# ---------------------------------------------------------------------
ok($node->poll_query_until('postgres', 'SELECT notified_seq = last_seq FROM registry.node'),
	'all changes notified before the big transaction');
my ($last0, $trunc0, $lost0, $sent0) = split /\|/,
  sql('SELECT last_seq, change_log_truncations, notifications_lost, notifications_sent FROM registry.node');
my $nchanges0 = scalar(@changes);

sql(q{INSERT INTO bulk SELECT g FROM generate_series(1, 40) g});
is( sql('SELECT last_seq, first_seq, change_log_used, change_log_truncations FROM registry.node'),
	join('|', $last0 + 40, $last0 + 41, 0, $trunc0 + 1),
	'40 changes in one transaction: seqs consumed, ring emptied, change_log_truncations + 1');
is(sql('SELECT count(*) FROM registry.change_log'), '0', 'registry.change_log is empty');
is(sql(q{SELECT count(*) FROM bulk}), '40', 'the 40 rows are there');

my @overflow;
ok( wait_for(
		sub {
			@overflow = grep { ($_->{op} // '') eq 'overflow' } @changes;
			return scalar(@overflow) > 0;
		}),
	'an overflow notification arrived');
is(scalar(@overflow), 1, 'exactly one overflow notification');
is(join('|', $overflow[0]{lost}, $overflow[0]{first_seq}),
	join('|', 40, $last0 + 41), 'overflow: lost 40 changes, first_seq after them');
is(scalar(grep { ($_->{table} // '') eq 'public.bulk' } @changes), 0,
	'no per-key notification for the lost changes');
ok($node->poll_query_until('postgres', "SELECT notifications_lost = $lost0 + 40 FROM registry.node"),
	'registry.node.notifications_lost increased by 40');
is(sql('SELECT * FROM registry.verify()'), '', 'verify() is clean after the overflow');

# ---------------------------------------------------------------------
# 4. TRUNCATE: one resync notification for the table
# ---------------------------------------------------------------------
my $before = scalar(@changes);
sql(q{TRUNCATE trunc_me});
my $resync_seq = $last0 + 41;
is(sql('SELECT last_seq FROM registry.node'), $resync_seq, 'TRUNCATE is one change');
is( sql(qq{SELECT table_name, coalesce(key, '<null>'), op, origin FROM registry.change_log WHERE seq = $resync_seq}),
	'public.trunc_me|<null>|resync|nt',
	'TRUNCATE is logged as a resync of the table without key');
ok(wait_for(sub { @changes > $before }), 'a notification for the TRUNCATE arrived');
my @after = @changes[ $before .. $#changes ];
is(scalar(@after), 1, 'exactly one notification for the TRUNCATE');
$c = $after[0];
is( join('|', $c->{seq}, $c->{table}, show_key($c->{key}), $c->{op}, $c->{origin}),
	"$resync_seq|public.trunc_me|<null>|resync|nt",
	'TRUNCATE notification: resync of public.trunc_me with a null key');
is($c->{version}, sql(qq{SELECT version FROM registry.change_log WHERE seq = $resync_seq}),
	'TRUNCATE notification: version of the change log entry');
is( sql(q{SELECT string_agg(key || ' ' || deleted, ',' ORDER BY key) FROM registry.versions('trunc_me')}),
	'1 true,2 true,3 true', 'TRUNCATE left a tombstone for every row');
is(sql('SELECT * FROM registry.verify()'), '', 'verify() is clean after the TRUNCATE');

# ---------------------------------------------------------------------
# totals
# ---------------------------------------------------------------------
ok($node->poll_query_until('postgres', 'SELECT notified_seq = last_seq FROM registry.node'),
	'notifier caught up');
my $sent = node_counter('notifications_sent');
my $per_change = sub { scalar(grep { ($_->{op} // '') ne 'overflow' } @changes) };
ok(wait_for(sub { $per_change->() >= $sent }),
	"all $sent change notifications sent were received");
is($per_change->(), $sent,
	'registry.node.notifications_sent equals the change notifications received');
ok(wait_for(sub { @wakeups && $wakeups[-1]{seq} == $resync_seq }),
	'the last wakeup reports the last seq');
is(scalar(@bad_payloads), 0, 'every payload was valid JSON');

$listener->quit;
$node->stop;
done_testing();
