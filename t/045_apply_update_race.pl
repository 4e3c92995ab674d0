# A peer's newer version of a key arriving while a local transaction holds
# the key's row locked.  The sync worker finds the row (current_state),
# then locks it at its TID to update it without a statement (apply.c,
# update_direct): that lock waits for the local transaction.  If it then
# returns TM_Ok (the local transaction rolled back) the row is updated in
# place; if the row was updated or deleted meanwhile, the apply falls back
# to the INSERT ... ON CONFLICT statement, where registry_stamp (or the
# tombstone check) raises a serialization failure if the local write is
# the newer one, and the batch is retried.  Whatever the path, last writer
# wins by (version, origin), a version being stamped when the row is
# written (not when its transaction commits), and both nodes must end
# with the winner.
#
# ur_a and ur_b pull from each other.  A session on ur_b locks a key's row
# in an open transaction; ur_a updates the key; once ur_b's sync worker is
# seen waiting for that session (holding the tuple lock, waiting for its
# transaction id), the session writes more or not, and commits or rolls
# back.  Each case then checks the key's row, version and origin (or
# tombstone) on both nodes, verify(), and that no batch failed.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my $na = new_node('ur_a', conf => "registry.antientropy_interval = '1h'\n");
my $nb = new_node('ur_b', conf => "registry.antientropy_interval = '1h'\n");
create_table([ $na, $nb ], 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
add_peer($nb, $na);
add_peer($na, $nb);
sql($na, q{INSERT INTO kv SELECT g, 'initial' FROM generate_series(1, 5) g});
wait_converged([ $na, $nb ], ['kv'], 'the initial rows are on both nodes');
is(sql($nb, q{SELECT count(*) FROM kv WHERE registry_origin = 'ur_a'}),
	'5', "ur_b holds ur_a's five rows");

my $local = $nb->background_psql('postgres');
my $local_pid = $local->query_safe('SELECT pg_backend_pid()');

# A key's state on a node, or in session $s: its value (or "absent"),
# then version|origin|deleted from registry.versions(), and the number of
# tombstones stored for it.
sub key_state_query
{
	my ($key) = @_;
	return qq{
SELECT coalesce((SELECT val FROM kv WHERE id = $key), 'absent')
    || ' ' || coalesce((SELECT format('%s|%s|%s', version, origin, deleted)
                          FROM registry.versions('kv') WHERE key = '$key'), 'no version')
    || ' ' || (SELECT count(*) FROM registry.tombstones WHERE key = '$key') || ' tombstone(s)'};
}

sub key_state
{
	my ($node, $key) = @_;
	return sql($node, key_state_query($key));
}

# ur_b's sync worker is waiting for the local session's transaction while
# holding a tuple lock on kv: table_tuple_lock() waiting, as update_direct
# does (the statement's ON CONFLICT check waits without a tuple lock).
sub worker_waits
{
	return sql($nb, qq{
SELECT count(*) FROM pg_stat_activity a
 WHERE a.backend_type = 'registry sync'
   AND a.wait_event_type = 'Lock' AND a.wait_event = 'transactionid'
   AND $local_pid = ANY (pg_blocking_pids(a.pid))
   AND EXISTS (SELECT 1 FROM pg_locks l
                WHERE l.pid = a.pid AND l.locktype = 'tuple'
                  AND l.relation = 'kv'::regclass AND l.granted)}) eq '1';
}

# The race on $key: the local session on ur_b opens a transaction and runs
# $first (which locks the row); ur_a sets the key to $remote; once ur_b's
# worker waits, the session runs $then (if any) and ends with $end.
# Returns ur_a's version of its update, and the key's state as the local
# session saw it just before $end.
sub race
{
	my (%o) = @_;
	my $key = $o{key};
	$local->query_safe('BEGIN');
	$local->query_safe($o{first});
	sql($na, qq{UPDATE kv SET val = '$o{remote}' WHERE id = $key});
	my $va = sql($na, qq{SELECT registry_version FROM kv WHERE id = $key});
	ok(poll_until(\&worker_waits),
		"$o{label}: ur_b's sync worker waits on the row lock the local session holds");
	$local->query_safe($o{then}) if defined $o{then};
	my $seen = $local->query_safe(key_state_query($key));
	$local->query_safe($o{end});
	return ($va, $seen);
}

# The fields of a key_state() string: value, version, origin, deleted.
sub fields
{
	my ($state) = @_;
	$state =~ /^(\S+) (\d+)\|(\S+)\|([tf]) / or die "unexpected state: $state";
	return ($1, $2, $3, $4);
}

sub converged
{
	my ($label, $key, $expected, $errors_a, $errors_b) = @_;
	wait_converged([ $na, $nb ], ['kv'], "$label: the nodes converge");
	is(key_state($nb, $key), $expected, "$label: ur_b holds the winner");
	is(key_state($na, $key), $expected, "$label: ur_a holds the winner");
	check_verify([ $na, $nb ], $label);
	is(peer_status($nb, 'ur_a', 'errors'), $errors_b,
		"$label: no batch from ur_a failed on ur_b");
	is(peer_status($na, 'ur_b', 'errors'), $errors_a,
		"$label: no batch from ur_b failed on ur_a");
}

my $errors_b = peer_status($nb, 'ur_a', 'errors');
my $errors_a = peer_status($na, 'ur_b', 'errors');

# ---------------------------------------------------------------------
# 1. ur_b updates key 1, ur_a updates it after (the newer version), and
#    while ur_b's apply waits the local session updates the key again:
#    that write is stamped after ur_a's (the worker's hlc_update moved
#    ur_b's clock past it) and wins.  The worker's lock returns
#    TM_Updated; the statement's registry_stamp refuses to overwrite the
#    newer row (40001) and the retried batch finds it not newer.
{
	my $label = 'case 1 (a later local update wins)';
	my ($va, $seen) = race(
		label => $label,
		key => 1,
		first => q{UPDATE kv SET val = 'b-first' WHERE id = 1},
		remote => 'a-1',
		then => q{UPDATE kv SET val = 'b-later' WHERE id = 1},
		end => 'COMMIT');
	my ($val, $vb, $ob, $del) = fields($seen);
	is("$val $ob $del", 'b-later ur_b f', "$label: the local session wrote its row");
	cmp_ok($vb, '>', $va, "$label: its version is newer than ur_a's");
	converged($label, 1, "b-later $vb|ur_b|f 0 tombstone(s)", $errors_a, $errors_b);
}

# ---------------------------------------------------------------------
# 2. The same key locked by an update that rolls back: the lock then
#    returns TM_Ok and ur_a's value is written in place on ur_b.
{
	my $label = 'case 2 (the local update rolls back)';
	my ($va, $seen) = race(
		label => $label,
		key => 2,
		first => q{UPDATE kv SET val = 'b-rolled-back' WHERE id = 2},
		remote => 'a-2',
		end => 'ROLLBACK');
	converged($label, 2, "a-2 $va|ur_a|f 0 tombstone(s)", $errors_a, $errors_b);
}

# ---------------------------------------------------------------------
# 3. The row locked (SELECT ... FOR UPDATE, no write yet), ur_a updates
#    it, and while the apply waits the local session deletes the key:
#    the delete is the later write, so the key must end deleted on both
#    nodes, with ur_b's tombstone.  The worker's lock returns TM_Deleted;
#    the statement's INSERT meets the newer tombstone.
{
	my $label = 'case 3 (a later local delete wins)';
	my ($va, $seen) = race(
		label => $label,
		key => 3,
		first => q{SELECT * FROM kv WHERE id = 3 FOR UPDATE},
		remote => 'a-3',
		then => q{DELETE FROM kv WHERE id = 3},
		end => 'COMMIT');
	my ($val, $vb, $ob, $del) = fields($seen);
	is("$val $ob $del", 'absent ur_b t', "$label: the local session deleted the key");
	cmp_ok($vb, '>', $va, "$label: its tombstone is newer than ur_a's update");
	converged($label, 3, "absent $vb|ur_b|t 1 tombstone(s)", $errors_a, $errors_b);
}

# ---------------------------------------------------------------------
# 4. ur_b updates key 4 and commits after ur_a's update arrived, but its
#    version was stamped at its UPDATE, before ur_a's: ur_a's wins, on
#    both nodes, although ur_b's commit came later.  The worker's lock
#    returns TM_Updated; the statement overwrites ur_b's older row.
{
	my $label = 'case 4 (an earlier local update committed later loses)';
	my ($va, $seen) = race(
		label => $label,
		key => 4,
		first => q{UPDATE kv SET val = 'b-early' WHERE id = 4},
		remote => 'a-4',
		end => 'COMMIT');
	my ($val, $vb, $ob, $del) = fields($seen);
	is("$val $ob $del", 'b-early ur_b f', "$label: the local session wrote its row");
	cmp_ok($vb, '<', $va, "$label: its version is older than ur_a's");
	converged($label, 4, "a-4 $va|ur_a|f 0 tombstone(s)", $errors_a, $errors_b);
}

# ---------------------------------------------------------------------
# 5. The same with a local delete stamped before ur_a's update: the key
#    comes back with ur_a's row on both nodes, its tombstone gone.  The
#    worker's lock returns TM_Deleted; the statement's INSERT replaces
#    the older tombstone.
{
	my $label = 'case 5 (an earlier local delete committed later loses)';
	my ($va, $seen) = race(
		label => $label,
		key => 5,
		first => q{DELETE FROM kv WHERE id = 5},
		remote => 'a-5',
		end => 'COMMIT');
	my ($val, $vb, $ob, $del) = fields($seen);
	is("$val $ob $del", 'absent ur_b t', "$label: the local session deleted the key");
	cmp_ok($vb, '<', $va, "$label: its tombstone is older than ur_a's update");
	converged($label, 5, "a-5 $va|ur_a|f 0 tombstone(s)", $errors_a, $errors_b);
}

$local->quit;
$_->stop for ($na, $nb);
done_testing();
