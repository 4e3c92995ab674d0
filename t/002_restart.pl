# Restarts and the clock: after a fast restart, a crash, a wall clock that
# stepped back, or a lost clock lease file, the data and its versions are
# intact, the digests agree with them, and every new version is above every
# stored one.  Within one server life the clock never goes backwards.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('restart');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'registry'
registry.node_name = 'rs'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION registry');
wait_ready('after CREATE EXTENSION');

my $pgdata = $node->data_dir;
my $lease_file = "$pgdata/registry_clock";

$node->safe_psql(
	'postgres', q{
CREATE TABLE items (id int PRIMARY KEY, val text);
CREATE TABLE pairs (a text, b int, val text, PRIMARY KEY (a, b));
CREATE TABLE probe (id int PRIMARY KEY);
SELECT registry.replicate('items');
SELECT registry.replicate('pairs');
SELECT registry.replicate('probe');
INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 20) g;
INSERT INTO pairs VALUES ('x', 1, 'p1'), ('x y', 2, 'p2'), ('q"r', 3, 'p3');
UPDATE items SET val = 'updated' WHERE id IN (3, 4);
DELETE FROM items WHERE id IN (5, 6);
DELETE FROM pairs WHERE a = 'x';
});

# ---------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------

# version comparison on the decimal text (exact for any bigint)
sub vcmp
{
	my ($x, $y) = @_;
	return length($x) <=> length($y) || $x cmp $y;
}

sub wait_ready
{
	my ($what) = @_;
	ok( $node->poll_query_until(
			'postgres', "SELECT state = 'ready' FROM registry.node"),
		"node ready $what");
}

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub epoch { return sql('SELECT epoch FROM registry.node'); }

# Everything stored: rows with their versions, and every key's version.
sub contents
{
	return sql(
		q{SELECT 'items', id, val, registry_version, registry_origin FROM items ORDER BY id})
	  . "\n--\n"
	  . sql(
		q{SELECT 'pairs', a, b, val, registry_version, registry_origin FROM pairs ORDER BY a, b})
	  . "\n--\n"
	  . sql(
		q{SELECT 'items', * FROM registry.versions('items') ORDER BY key})
	  . "\n--\n"
	  . sql(
		q{SELECT 'pairs', * FROM registry.versions('pairs') ORDER BY key});
}

sub max_version
{
	return sql(
		q{SELECT max(version) FROM (
			SELECT version FROM registry.versions('items')
			UNION ALL SELECT version FROM registry.versions('pairs')) v});
}

# The state right after a start: new epoch, empty change log, consistent
# digests, unchanged contents.
sub check_restarted
{
	my ($label, $old_epoch, $old_contents) = @_;

	isnt(epoch(), $old_epoch, "$label: epoch changed");
	is( sql(q{SELECT last_seq, first_seq, change_log_used FROM registry.node}),
		'0|1|0', "$label: change log restarted empty (last_seq 0)");
	is(sql('SELECT count(*) FROM registry.change_log'),
		'0', "$label: registry.change_log is empty");
	is(sql('SELECT * FROM registry.verify()'),
		'', "$label: verify() reports no inconsistency");
	is(contents(), $old_contents,
		"$label: rows, versions and tombstones identical to before");
	is( sql(
			q{SELECT string_agg(t.table_name, ',') FROM registry.tables t,
			  LATERAL (SELECT count(*) FILTER (WHERE NOT deleted) AS live,
			                  count(*) FILTER (WHERE deleted) AS dead
			           FROM registry.versions(t.relid)) v
			  WHERE (t.rows, t.tombstones) IS DISTINCT FROM (v.live, v.dead)}),
		'',
		"$label: registry.tables counts agree with registry.versions");
}

# New writes (inserts, updates, a delete and a re-insert) must be stamped
# above $max, and be the change log's seqs 1..6 if $fresh_log is true (no
# other change since the start).
my $next_id = 1000;
sub check_new_writes
{
	my ($label, $max, $fresh_log) = @_;
	my $id = $next_id++;
	my $out = sql(
		qq{INSERT INTO items VALUES ($id, 'new') RETURNING registry_version;
		   UPDATE items SET val = val || '+' WHERE id = 1 RETURNING registry_version;
		   DELETE FROM items WHERE id = 2 RETURNING 0;
		   INSERT INTO items VALUES (2, 'back') RETURNING registry_version;
		   INSERT INTO pairs VALUES ('n$id', $id, 'new') RETURNING registry_version;
		   UPDATE pairs SET val = val || '+' WHERE a = 'q"r' RETURNING registry_version;});
	my @v = split /\n/, $out;
	is(scalar(@v), 6, "$label: six writes done");
	# (the deletion's version, a tombstone replaced by the re-insert, is
	# checked through the change log when it holds only these writes)
	my @bad = grep { vcmp($_, $max) <= 0 } grep { $_ ne '0' } @v;
	is(join(',', @bad), '', "$label: every new row version is above the stored maximum $max");
	my $prev = $max;
	my $increasing = 1;
	for my $x (grep { $_ ne '0' } @v)
	{
		$increasing = 0 unless vcmp($x, $prev) > 0;
		$prev = $x;
	}
	ok($increasing, "$label: successive new versions strictly increase");
	if ($fresh_log)
	{
		is( sql(q{SELECT string_agg(format('%s %s %s %s', seq, table_name, key, op), ', ' ORDER BY seq)
			    FROM registry.change_log}),
			join(', ',
				"1 public.items $id insert",
				'2 public.items 1 update',
				'3 public.items 2 delete',
				'4 public.items 2 insert',
				"5 public.pairs (n$id,$id) insert",
				'6 public.pairs ("q\\"r",3) update'),
			"$label: new writes are seqs 1..6 of the new change log");
		is( sql(qq{SELECT count(*) FROM registry.change_log WHERE version <= $max}),
			'0', "$label: change log versions (the deletion's too) are above $max");
	}
	my $now = sql('SELECT registry.hlc_now()');
	ok(vcmp($now, $prev) > 0, "$label: hlc_now() $now is above every version issued");
	is(sql('SELECT * FROM registry.verify()'),
		'', "$label: verify() is clean after the new writes");
}

# A key deleted before the restart, inserted again: its tombstone (counted
# again from disk at start, digest.c) is taken, not left beside the row.
sub reinsert_deleted
{
	my ($label, $id) = @_;
	sql(qq{INSERT INTO items VALUES ($id, 'reborn')});
	is( sql(
			qq{SELECT count(*) FROM registry.tombstones t JOIN registry.tables r USING (tid)
			   WHERE r.table_name = 'public.items' AND t.key = '$id'}),
		'0', "$label: inserting key $id again took its tombstone from before");
	is(sql('SELECT * FROM registry.verify()'),
		'', "$label: verify() is clean after the re-insert");
}

# ---------------------------------------------------------------------
# 1. fast restart
# ---------------------------------------------------------------------
my $epoch = epoch();
my $contents = contents();
my $max = max_version();
like($max, qr/^\d+$/, 'stored versions exist');
cmp_ok(sql('SELECT last_seq FROM registry.node'), '>', 0, 'writes were logged before the restart');

$node->restart;
wait_ready('after fast restart');
check_restarted('fast restart', $epoch, $contents);
check_new_writes('after fast restart', $max, 1);
reinsert_deleted('after fast restart', 5);

# ---------------------------------------------------------------------
# 2. crash (immediate stop): committed rows survive
# ---------------------------------------------------------------------
sql(q{INSERT INTO items SELECT g, 'before crash' FROM generate_series(200, 219) g;
    DELETE FROM items WHERE id = 7;
    UPDATE pairs SET val = 'before crash' WHERE a = 'q"r'});
$epoch = epoch();
$contents = contents();
$max = max_version();
$node->stop('immediate');
$node->start;
wait_ready('after crash');
check_restarted('crash restart', $epoch, $contents);
is(sql(q{SELECT count(*) FROM items WHERE val = 'before crash'}),
	'20', 'crash restart: the 20 rows committed just before the crash are there');
is( sql(q{SELECT deleted FROM registry.versions('items') WHERE key = '7'}),
	't', 'crash restart: the deletion committed just before the crash is a tombstone');
check_new_writes('after crash restart', $max, 1);
reinsert_deleted('after crash restart', 7);

# ---------------------------------------------------------------------
# 3. within one server life, the wall clock steps back an hour
# ---------------------------------------------------------------------
my $before_step = sql('SELECT registry.hlc_now()');
my $regressions = sql('SELECT clock_regressions FROM registry.node');
sql(q{SELECT registry.set_clock_offset('-1 hour')});
is(sql('SELECT clock_offset_ms FROM registry.node'),
	'-3600000', 'clock offset is -1 hour');
my $script = '';
for my $i (1 .. 25)
{
	$script .= "INSERT INTO items VALUES (300 + $i, 'step') RETURNING registry_version;\n";
	$script .= "SELECT registry.hlc_now();\n";
	$script .= "UPDATE items SET val = 'stepped' WHERE id = 300 + $i RETURNING registry_version;\n";
	$script .= "DELETE FROM items WHERE id = 300 + $i - 1;\n" if $i > 1;
}
my @seen = ($before_step, split(/\n/, sql($script)));
is(scalar(@seen), 76, 'clock step: 75 versions collected');
my @backwards;
for my $i (1 .. $#seen)
{
	push @backwards, "$seen[$i-1] -> $seen[$i]" unless vcmp($seen[$i], $seen[$i - 1]) > 0;
}
is(join(', ', @backwards), '',
	'clock step back: row versions and hlc_now() strictly increase');
cmp_ok(sql('SELECT clock_regressions FROM registry.node'),
	'>', $regressions, 'clock step back: counted as a clock regression');
is( sql(
		qq{SELECT count(*) FROM registry.versions('items')
		   WHERE key::int BETWEEN 301 AND 325 AND version <= $before_step}),
	'0',
	'clock step back: the deletions\' tombstones are above the earlier stamps too');
sql(q{SELECT registry.set_clock_offset('0')});
is(sql('SELECT * FROM registry.verify()'), '', 'clock step back: verify() is clean');

# ---------------------------------------------------------------------
# 4. the wall clock is an hour behind the stored versions at start
# ---------------------------------------------------------------------
sql(q{SELECT registry.set_clock_offset('1 hour')});
sql(q{INSERT INTO items SELECT g, 'future' FROM generate_series(400, 409) g;
    UPDATE items SET val = 'future' WHERE id = 1;
    DELETE FROM items WHERE id = 8});
is( sql(
		q{SELECT bool_and(registry.version_time(version) > now() + interval '50 minutes')
		  FROM registry.versions('items') WHERE key IN ('400', '409', '1', '8')}),
	't',
	'versions written with a +1 hour offset are about an hour ahead');
$epoch = epoch();
$contents = contents();
$max = max_version();
ok( sql(qq{SELECT registry.version_time($max) > now() + interval '50 minutes'}) eq 't',
	'the stored maximum version is an hour ahead of the wall clock');
$node->restart;
wait_ready('after restart with the clock an hour behind');
is(sql('SELECT clock_offset_ms FROM registry.node'),
	'0', 'clock offset was reset by the restart');
check_restarted('clock behind', $epoch, $contents);
check_new_writes('clock behind', $max, 1);
reinsert_deleted('clock behind', 8);

# ---------------------------------------------------------------------
# 5. the clock lease file is lost while the stored versions (the largest
#    of them a tombstone) are two hours ahead of the wall clock
# ---------------------------------------------------------------------
sql(q{SELECT registry.set_clock_offset('2 hours')});
sql(q{UPDATE items SET val = 'far future' WHERE id = 9;
    DELETE FROM pairs WHERE a = 'x y'});
sql(q{SELECT registry.set_clock_offset('0')});
$max = max_version();
is( sql(
		qq{SELECT deleted AND registry.version_time(version) > now() + interval '110 minutes'
		   FROM registry.versions('pairs') WHERE version = $max}),
	't',
	'the largest stored version is a tombstone two hours ahead');
$epoch = epoch();
$contents = contents();
ok(-f $lease_file, 'clock lease file exists');
$node->stop;
unlink $lease_file or die "could not remove $lease_file: $!";
$node->start;

# A writer that arrives before the maintenance worker has read the stored
# versions must wait for it, and then stamp above them.
my $early = sql(q{INSERT INTO probe VALUES (1) RETURNING registry_version});
ok(vcmp($early, $max) > 0,
	"lost lease: a write right after start ($early) is above the stored maximum $max"
);
wait_ready('after start without the lease file');
isnt(epoch(), $epoch, 'lost lease: epoch changed');
is(sql('SELECT * FROM registry.verify()'),
	'', 'lost lease: verify() reports no inconsistency');
is( sql(
		q{SELECT count(*) FROM registry.change_log}),
	'1', 'lost lease: the change log holds only the early write');
is(contents(), $contents,
	'lost lease: rows, versions and tombstones of items and pairs identical to before');
my $now = sql('SELECT registry.hlc_now()');
ok(vcmp($now, $max) > 0, "lost lease: hlc_now() $now is above the stored maximum $max");
ok(-f $lease_file, 'lost lease: the lease file was written again');
check_new_writes('lost lease', $max);

# and the rewritten lease covers the clock across one more restart
$max = max_version();
$node->restart;
wait_ready('after the last restart');
check_new_writes('restart after lease rewrite', $max, 1);

$node->stop;
done_testing();
