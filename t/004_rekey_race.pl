# An UPDATE that moves a row to a key another transaction is deleting or
# inserting at the same moment.  The registry records such an UPDATE in its
# BEFORE trigger, before the row's unique check would wait for the other
# transaction; it must wait itself, so that the new key's tombstone (or its
# absence) is final when it looks: no key may end with a live row and a
# newer tombstone.  Each case is driven step by step with two sessions.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh ();

my $node = RegistryMesh::new_node('rk');

sub sql { return RegistryMesh::sql($node, $_[0]); }

sql(q{
CREATE TABLE kv (id int PRIMARY KEY, val text);
SELECT registry.replicate('kv');
});

my $s1 = $node->background_psql('postgres', on_error_stop => 0);
my $s2 = $node->background_psql('postgres', on_error_stop => 0);
my $s3 = $node->background_psql('postgres', on_error_stop => 0);

# Start "UPDATE kv SET id = $to WHERE id = $from" in session $s and wait
# until it waits for another transaction.
sub start_blocked_move
{
	my ($s, $from, $to) = @_;
	$s->query_until(qr/moving/, "\\echo moving\nUPDATE kv SET id = $to WHERE id = $from;\n");
	ok( $node->poll_query_until(
			'postgres', qq{
SELECT count(*) = 1 FROM pg_stat_activity
 WHERE wait_event = 'transactionid' AND query LIKE 'UPDATE kv SET id = $to %'}),
		"the move $from -> $to waits for the other transaction");
}

# How the blocked statement of session $s ended: 'ok' or its error.
sub finish
{
	my ($s) = @_;
	$s->query('SELECT 1');
	my $err = $s->{stderr};
	$s->{stderr} = '';
	return $err ne '' ? $err : 'ok';
}

# Session 1 runs $writer in an open transaction; session 2 then moves row
# $from to key $to, which waits for session 1; session 1 ends with $end.
# Returns how the move ended.
sub race
{
	my ($writer, $from, $to, $end) = @_;
	$s1->query_safe('BEGIN');
	$s1->query_safe($writer);
	start_blocked_move($s2, $from, $to);
	$s1->query_safe($end);
	return finish($s2);
}

sub state_of
{
	my ($key) = @_;
	return sql(qq{
SELECT coalesce((SELECT 'live ' || val FROM kv WHERE id = $key), 'absent')
    || ', ' || coalesce((SELECT CASE WHEN deleted THEN 'tombstone' ELSE 'row' END
                           FROM registry.versions('kv') WHERE key = '$key'), 'no version')});
}

sub verify_clean
{
	my ($what) = @_;
	is(sql('SELECT count(*) FROM registry.verify()'), '0', "verify() clean $what");
	is( sql(q{
SELECT (SELECT rows FROM registry.tables WHERE table_name = 'public.kv')
     = (SELECT count(*) FROM kv)}), 't', "registry.tables counts the rows $what");
}

# 1. The new key's row is deleted, but its tombstone is stamped only after
#    the move was stamped (an AFTER trigger runs at the end of the
#    deleting statement, held here on an advisory lock).  The move waits
#    for the delete, then finds the newer tombstone and fails (retryable);
#    nothing changes.  Recorded without that wait, the move would have
#    left key 43 with a live row and a newer tombstone.
sql("INSERT INTO kv VALUES (41, 'a'), (43, 'b')");
$s3->query_safe('SELECT pg_advisory_lock(7)');
$s1->query_safe('BEGIN');
$s1->query_until(qr/deleting/, q{\echo deleting
WITH d AS (DELETE FROM kv WHERE id = 43 RETURNING 1) SELECT pg_advisory_lock(7) FROM d;
});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE wait_event = 'advisory'"),
	'the delete of 43 is held before its tombstone is written');
start_blocked_move($s2, 41, 43);
$s3->query_safe('SELECT pg_advisory_unlock(7)');
is(finish($s1), 'ok', 'the delete completes');
$s1->query_safe('COMMIT');
like(finish($s2), qr/deleted concurrently with a newer version/,
	'the move onto a key deleted by a newer version fails with a serialization failure');
is(state_of(41), 'live a, row', 'the row stayed at its old key');
is(state_of(43), 'absent, tombstone', 'the deleted key has its tombstone and no row');
verify_clean('after a move onto a key deleted by a newer version');

# 2. The new key is deleted (and stamped) before the move starts and
#    commits while the move waits: the move, newer, wins and takes the
#    tombstone.
sql("INSERT INTO kv VALUES (43, 'c')");
is(race('DELETE FROM kv WHERE id = 43', 41, 43, 'COMMIT'), 'ok',
	'the move onto a key deleted by an older version succeeds');
is(state_of(41), 'absent, tombstone', 'the old key is deleted');
is(state_of(43), 'live a, row', 'the new key holds the moved row, its tombstone gone');
verify_clean('after a move onto a key deleted by an older version');

# 3. The delete of the new key rolls back: the move fails its unique check.
sql("INSERT INTO kv VALUES (45, 'd')");
like(race('DELETE FROM kv WHERE id = 45', 43, 45, 'ROLLBACK'),
	qr/duplicate key value violates unique constraint/,
	'the move onto a key whose delete rolled back fails its unique check');
is(state_of(43), 'live a, row', 'row 43 unchanged');
is(state_of(45), 'live d, row', 'row 45 unchanged');
verify_clean('after a move onto a key whose delete rolled back');

# 4. The new key (with a tombstone) is being inserted and the insert rolls
#    back: the move succeeds and takes the tombstone.
sql("DELETE FROM kv WHERE id = 45");
is(state_of(45), 'absent, tombstone', 'key 45 deleted');
is(race("INSERT INTO kv VALUES (45, 'e')", 43, 45, 'ROLLBACK'), 'ok',
	'the move onto a key whose insert rolled back succeeds');
is(state_of(43), 'absent, tombstone', 'the old key is deleted');
is(state_of(45), 'live a, row', 'the new key holds the moved row, its tombstone gone');
verify_clean('after a move onto a key whose insert rolled back');

# 5. The insert of the new key commits: the move fails its unique check.
like(race("INSERT INTO kv VALUES (47, 'f')", 45, 47, 'COMMIT'),
	qr/duplicate key value violates unique constraint/,
	'the move onto a key inserted meanwhile fails its unique check');
is(state_of(45), 'live a, row', 'row 45 unchanged');
is(state_of(47), 'live f, row', 'row 47 as inserted');
verify_clean('after a move onto a key inserted meanwhile');

# 6. A committed row holds the new key: the move fails at once, and the
#    row it looked at can be deleted afterwards.
$s2->query('UPDATE kv SET id = 47 WHERE id = 45');
like(finish($s2), qr/duplicate key value violates unique constraint/,
	'the move onto a committed key fails at once');
sql('DELETE FROM kv WHERE id = 47');
is(state_of(47), 'absent, tombstone', 'key 47 deleted');
verify_clean('at the end');

# The change log agrees: per key, versions increase with seq.
is( sql(q{
SELECT count(*) FROM (
  SELECT key, version, lag(version) OVER (PARTITION BY key ORDER BY seq) AS prev
    FROM registry.change_log WHERE table_name = 'public.kv') c
 WHERE prev IS NOT NULL AND version <= prev}), '0',
	'change log: each key\'s versions increase with seq');

$s1->quit;
$s2->quit;
$s3->quit;
done_testing();
