# Tombstones and their purge.
#
# Part 1: a node that was down while a row was deleted gets the deletion
# when it comes back, and the row never comes back.  (Run with a retention
# of an hour: the maintenance worker purges every retention/2, so with one
# second the tombstone could be purged before the node is back, which is
# part 2.)
# Part 2, with registry.tombstone_retention = 1 (one second): a node is
# down while a row is deleted and the tombstone purged on the others; when
# it comes back with its stale copy of the row, the others refuse it
# (purge horizon) and report the node as needing a resync; after
# registry.resync() on it, the row is gone there too and all converge.
# Part 3, same retention: every row of the table is deleted and purged
# while a node is down; when it comes back, none of its stale rows may be
# brought back on the others either.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use RegistryMesh;

my @nodes =
  map { new_node($_, conf => "registry.tombstone_retention = '1h'\n") }
  qw(tomb_a tomb_b tomb_c);
my ($na, $nb, $nc) = @nodes;
create_table(\@nodes, 'kv', 'CREATE TABLE kv (id int PRIMARY KEY, val text)');
full_mesh(@nodes);

is(sql($na, q{SELECT setting FROM pg_settings WHERE name = 'registry.tombstone_retention'}),
	'3600', 'part 1: tombstone retention is one hour');

sql($na, q{INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 20) g});
wait_converged(\@nodes, ['kv'], 'initial rows converge');

sub has_row
{
	my ($node, $id) = @_;
	return sql($node, "SELECT count(*) FROM kv WHERE id = $id");
}

# ---------------------------------------------------------------------
# Part 1: the deletion reaches a node that was down
# ---------------------------------------------------------------------
$nc->stop('fast');
sql($na, q{DELETE FROM kv WHERE id = 1});
wait_converged([ $na, $nb ], ['kv'], 'part 1: tomb_a and tomb_b converge on the delete');
is(has_row($nb, 1), '0', 'part 1: the row is deleted on tomb_b');
is( sql($nb, q{SELECT count(*) FROM registry.versions('kv') WHERE key = '1' AND deleted}),
	'1', 'part 1: tomb_b holds the tombstone');

$nc->start;
wait_ready($nc);
wait_converged(\@nodes, ['kv'], 'part 1: all three converge after tomb_c is back');
# a few more rounds: the row must not come back from tomb_c's old copy
for my $i (1 .. 3)
{
	wait_converged(\@nodes, ['kv'], "part 1: still converged (extra round $i)");
}
for my $n (@nodes)
{
	is(has_row($n, 1), '0', 'part 1: the deleted row is absent on ' . $n->name);
	is( sql($n, q{SELECT count(*) FROM registry.versions('kv') WHERE key = '1' AND deleted}),
		'1', 'part 1: ' . $n->name . ' holds the tombstone of the deleted row');
}
is( sql($na, q{SELECT count(*) FROM kv}), '19', 'part 1: 19 rows left');
check_verify(\@nodes, 'part 1');

# ---------------------------------------------------------------------
# Part 2: the tombstone is purged while tomb_c is down
# ---------------------------------------------------------------------
for my $n (@nodes)
{
	$n->append_conf('postgresql.conf', "registry.tombstone_retention = 1\n");
	$n->restart;
	wait_ready($n);
	is(sql($n, q{SELECT setting FROM pg_settings WHERE name = 'registry.tombstone_retention'}),
		'1', 'part 2: tombstone retention is one second on ' . $n->name);
}
wait_converged(\@nodes, ['kv'], 'part 2: converged after the restarts');
is(has_row($nc, 2), '1', 'part 2: the row exists on tomb_c before it goes down');
$nc->stop('fast');
sql($na, q{DELETE FROM kv WHERE id = 2});
wait_converged([ $na, $nb ], ['kv'], 'part 2: tomb_a and tomb_b converge on the delete');

# purge on tomb_a and tomb_b until the tombstone of key 2 is gone from both
ok( poll_until(
		sub {
			sql($_, 'SELECT registry.purge_tombstones()') for ($na, $nb);
			sql($na, q{SELECT registry.sync_now('tomb_b')});
			sql($nb, q{SELECT registry.sync_now('tomb_a')});
			return sql($na, q{SELECT count(*) FROM registry.versions('kv') WHERE key = '2'}) eq '0'
			  && sql($nb, q{SELECT count(*) FROM registry.versions('kv') WHERE key = '2'}) eq '0';
		}),
	'part 2: the tombstone of key 2 is purged on tomb_a and tomb_b');
for my $n ($na, $nb)
{
	cmp_ok(sql($n, q{SELECT purge_horizon FROM registry.replicated_tables}),
		'>', 0, 'part 2: ' . $n->name . ' has a purge horizon');
	# tomb_c has not been identical for longer than the retention and the
	# purge no longer waits for it: it is lost, and peer_status should say so
	# (the sync worker notices it at its next step)
	ok(poll_until(sub { peer_status($n, 'tomb_c', 'needs_resync') eq 't' }),
		'part 2: ' . $n->name . ' says the absent (lost) tomb_c needs a resync');
}

$nc->start;
wait_ready($nc);
is(has_row($nc, 2), '1', 'part 2: tomb_c comes back with its stale copy of the row');

# tomb_a and tomb_b must refuse tomb_c's stale row, round after round
ok( sync_until(
		\@nodes,
		sub {
			sql($na, q{SELECT rows_refused_purged > 0 FROM registry.peer_status WHERE peer = 'tomb_c'}) eq 't'
			  && sql($nb, q{SELECT rows_refused_purged > 0 FROM registry.peer_status WHERE peer = 'tomb_c'}) eq 't';
		}),
	'part 2: tomb_a and tomb_b refused tomb_c\'s row as older than their purge horizon');
for my $i (1 .. 3)
{
	sql($_, q{SELECT registry.sync_now('tomb_c')}) for ($na, $nb);
	is(has_row($na, 2) . has_row($nb, 2), '00',
		"part 2: the purged row did not come back on tomb_a or tomb_b (round $i)");
}
for my $n ($na, $nb)
{
	is(peer_status($n, 'tomb_c', 'needs_resync'), 't',
		'part 2: ' . $n->name . ' still says tomb_c needs a resync');
	# sync_now() is true only if this node then has everything the peer had
	is(sql($n, q{SELECT registry.sync_now('tomb_c')}), 'f',
		'part 2: sync_now with tomb_c is false on ' . $n->name
		  . ' (it refused a row tomb_c has)');
}

# resync tomb_c
sql($nc, q{SELECT registry.resync('kv')});
wait_converged(\@nodes, ['kv'], 'part 2: all three converge after tomb_c\'s resync');
for my $n (@nodes)
{
	is(has_row($n, 2), '0', 'part 2: the deleted row is absent on ' . $n->name);
	is(sql($n, 'SELECT count(*) FROM kv'), '18', 'part 2: 18 rows on ' . $n->name);
}
is(table_rows($nc, 'kv'), table_rows($na, 'kv'),
	'part 2: tomb_c\'s rows, versions and origins equal tomb_a\'s');
ok( sync_until(
		\@nodes,
		sub {
			sql($na, q{SELECT NOT needs_resync FROM registry.peer_status WHERE peer = 'tomb_c'}) eq 't'
			  && sql($nb, q{SELECT NOT needs_resync FROM registry.peer_status WHERE peer = 'tomb_c'}) eq 't';
		}),
	'part 2: tomb_c no longer needs a resync');
check_verify(\@nodes, 'part 2');

# ---------------------------------------------------------------------
# Part 3: every row is deleted and purged while tomb_c is down
# ---------------------------------------------------------------------
$nc->stop('fast');
sql($na, q{DELETE FROM kv});
wait_converged([ $na, $nb ], ['kv'], 'part 3: tomb_a and tomb_b converge on deleting every row');
ok( poll_until(
		sub {
			sql($_, 'SELECT registry.purge_tombstones()') for ($na, $nb);
			sql($na, q{SELECT registry.sync_now('tomb_b')});
			sql($nb, q{SELECT registry.sync_now('tomb_a')});
			return sql($na, q{SELECT count(*) FROM registry.versions('kv')}) eq '0'
			  && sql($nb, q{SELECT count(*) FROM registry.versions('kv')}) eq '0';
		}),
	'part 3: every tombstone is purged on tomb_a and tomb_b');
my %rounds = map { $_->name => peer_status($_, 'tomb_c', 'rounds') } ($na, $nb);
$nc->start;
wait_ready($nc);
is(sql($nc, 'SELECT count(*) FROM kv'), '18', 'part 3: tomb_c comes back with its 18 stale rows');
# at least two complete rounds of tomb_a and tomb_b with tomb_c
ok( sync_until(
		\@nodes,
		sub {
			peer_status($na, 'tomb_c', 'rounds') >= $rounds{tomb_a} + 2
			  && peer_status($nb, 'tomb_c', 'rounds') >= $rounds{tomb_b} + 2;
		}),
	'part 3: tomb_a and tomb_b completed rounds with tomb_c');
for my $n ($na, $nb)
{
	is(sql($n, 'SELECT count(*) FROM kv'), '0',
		'part 3: none of the purged rows came back on ' . $n->name);
	note('part 3: peer_status on ' . $n->name . ' for tomb_c: '
		  . peer_status($n, 'tomb_c', 'rows_applied, rows_skipped, rows_refused_purged, needs_resync'));
}
sql($nc, q{SELECT registry.resync('kv')});
wait_converged(\@nodes, ['kv'], 'part 3: all three converge after tomb_c\'s resync');
for my $n (@nodes)
{
	is(sql($n, 'SELECT count(*) FROM kv'), '0', 'part 3: no row on ' . $n->name);
}
check_verify(\@nodes, 'part 3');

$_->stop for @nodes;
done_testing();
