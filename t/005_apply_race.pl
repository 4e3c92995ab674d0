# A remote delete applied while a local transaction inserts the same key.
# The key has no visible row when the delete arrives, so the apply path
# writes only a tombstone; the local INSERT, not yet committed, has found
# no tombstone to take.  Neither may commit into a key with a live row and
# a tombstone at once.  (Found by t/022: the node then counted one
# tombstone too many when the row was later deleted.)  Each case is driven
# step by step with two sessions.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh ();

my $node = RegistryMesh::new_node('ar');

sub sql { return RegistryMesh::sql($node, $_[0]); }

sql(q{
CREATE TABLE kv (id int PRIMARY KEY, val text);
SELECT registry.replicate('kv');
});

my $local = $node->background_psql('postgres', on_error_stop => 0);
my $apply = $node->background_psql('postgres', on_error_stop => 0);

# How the last statement sent to session $s ended: 'ok' or its error.
sub outcome
{
	my ($s) = @_;
	$s->query('SELECT 1');
	my $err = $s->{stderr};
	$s->{stderr} = '';
	return $err ne '' ? $err : 'ok';
}

sub state_of
{
	my ($key) = @_;
	return sql(qq{
SELECT coalesce((SELECT 'live ' || val FROM kv WHERE id = $key), 'absent')
    || ', ' || coalesce((SELECT CASE WHEN deleted THEN 'tombstone' ELSE 'row' END
                           FROM registry.versions('kv') WHERE key = '$key'), 'no version')
    || ', ' || (SELECT count(*) FROM registry.tombstones WHERE key = '$key') || ' tombstone(s)'});
}

sub verify_clean
{
	my ($what) = @_;
	is(sql('SELECT * FROM registry.verify()'), '', "verify() clean $what");
	is( sql(q{
SELECT format('%s rows %s tombstones', rows, tombstones) FROM registry.tables WHERE table_name = 'public.kv'}),
		sql(q{
SELECT format('%s rows %s tombstones', (SELECT count(*) FROM kv),
              (SELECT count(*) FROM registry.tombstones t JOIN registry.replicated_tables r USING (tid)
                WHERE r.relid = 'kv'::regclass))}),
		"registry.tables counts rows and tombstones as stored $what");
}

# ---------------------------------------------------------------------
# 1. The local INSERT comes first.  The delete, newer, must not write its
#    tombstone beside the uncommitted row: it fails as a serialization
#    failure (the sync worker retries the batch, and then sees the row).

# Session $local inserts $key in an open transaction; session $apply
# applies a newer delete of it; $local ends with $end.  Returns how the
# delete ended.
sub insert_then_delete
{
	my ($key, $val, $end) = @_;
	$local->query_safe('BEGIN');
	$local->query_safe(qq{INSERT INTO kv VALUES ($key, '$val')});
	$apply->query(
		qq{SELECT registry.apply_row('kv', '$key', registry.hlc_now(), 'peer', true)});
	my $result = outcome($apply);
	$local->query_safe($end);
	return $result;
}

like(insert_then_delete(1, 'local', 'COMMIT'),
	qr/registry key "1" was inserted concurrently/,
	'a remote delete of a key being inserted here fails');
is(state_of(1), 'live local, row, 0 tombstone(s)',
	'the local insert commits alone: no tombstone beside its row');
verify_clean('after an insert raced by a remote delete');

# retried, the delete finds the row and deletes it
is(sql(q{SELECT registry.apply_row('kv', '1', registry.hlc_now(), 'peer', true)}),
	'applied', 'the retried remote delete is applied');
is(state_of(1), 'absent, tombstone, 1 tombstone(s)',
	'the retried delete replaced the row by its tombstone');
verify_clean('after the retried delete');

# and a later local delete of a re-inserted key counts right
sql(q{INSERT INTO kv VALUES (1, 'again')});
sql(q{DELETE FROM kv WHERE id = 1});
verify_clean('after the key is inserted and deleted again');

# ---------------------------------------------------------------------
# 2. The same with the transaction that inserts rolling back: the retried
#    delete then writes its tombstone.
like(insert_then_delete(2, 'rolled back', 'ROLLBACK'),
	qr/registry key "2" was inserted concurrently/,
	'a remote delete of a key being inserted here fails, whatever the inserter does next');
is(sql(q{SELECT registry.apply_row('kv', '2', registry.hlc_now(), 'peer', true)}),
	'applied', 'retried after the rollback, the remote delete is applied');
is(state_of(2), 'absent, tombstone, 1 tombstone(s)', 'the key has only the tombstone');
verify_clean('after a rolled-back insert raced by a remote delete');

# ---------------------------------------------------------------------
# 3. The remote delete comes first (its tombstone not yet committed).
#    The local INSERT waits for it, then takes the tombstone, its own
#    version being the newer.

# Session $apply applies a delete of $key at $version and holds its
# transaction open; session $local inserts $key, which must wait for it;
# $apply commits.  Returns how the INSERT ended.
sub delete_then_insert
{
	my ($key, $version, $val, $what) = @_;
	$apply->query_safe('BEGIN');
	$apply->query_safe(
		qq{SELECT registry.apply_row('kv', '$key', $version, 'peer', true)});
	$local->query_until(qr/inserting/,
		"\\echo inserting\nINSERT INTO kv VALUES ($key, '$val');\n");
	ok( $node->poll_query_until(
			'postgres', qq{
SELECT count(*) = 1 FROM pg_stat_activity
 WHERE wait_event = 'transactionid' AND query LIKE 'INSERT INTO kv VALUES ($key,%'}),
		"the local insert waits for $what");
	$apply->query_safe('COMMIT');
	return outcome($local);
}

is( delete_then_insert(
		3, sql('SELECT registry.hlc_now()'),
		'after the delete', 'the remote delete'),
	'ok',
	'the newer local insert then succeeds');
is(state_of(3), 'live after the delete, row, 0 tombstone(s)',
	'it took the older tombstone');
verify_clean('after a remote delete raced by a newer insert');

# A delete stamped ahead of this node's clock moves the clock forward
# (hybrid logical clock), so the INSERT that waits for it is still stamped
# above it, and takes its tombstone.
my $ahead = sql('SELECT registry.hlc_now() + 1000000000');
is( delete_then_insert(
		4, $ahead, 'after the clock moved',
		'a remote delete stamped ahead of the clock'),
	'ok',
	'the local insert then succeeds');
is(state_of(4), 'live after the clock moved, row, 0 tombstone(s)',
	'it took the tombstone');
cmp_ok(sql(q{SELECT registry_version FROM kv WHERE id = 4}), '>', $ahead,
	'its version is above the delete\'s');
verify_clean('after a remote delete stamped ahead raced by an insert');

$local->quit;
$apply->quit;
$node->stop;
done_testing();
