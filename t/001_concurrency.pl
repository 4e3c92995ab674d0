# Concurrent writers on one node: after a pgbench run of overlapping
# upserts, updates, deletes, key changes, savepoints, rollbacks and failing
# transactions, the registry's bookkeeping (row versions, tombstones,
# digests, counts, change log, acceptors) must agree exactly with the data.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('conc');
$node->init;
$node->append_conf(
	'postgresql.conf', q{
shared_preload_libraries = 'registry'
registry.node_name = 'conc'
registry.max_acceptors = 16
# keep every change of the run in the ring
registry.change_log_size = 32768
max_connections = 40
# deadlocks between multi-row statements are retried by pgbench; find them fast
deadlock_timeout = '20ms'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION registry');
$node->poll_query_until('postgres',
	"SELECT state = 'ready' FROM registry.node")
  or die 'node did not become ready';

$node->safe_psql(
	'postgres', q{
CREATE TABLE svc (name text, zone int, val text, PRIMARY KEY (name, zone));
CREATE TABLE kv (id int PRIMARY KEY, val int NOT NULL);
SELECT registry.replicate('svc');
SELECT registry.replicate('kv');
});

is( $node->safe_psql(
		'postgres',
		'SELECT acceptor_capacity, change_log_truncations FROM registry.node'),
	'16|0',
	'acceptor capacity is the configured minimum of 16');

# ---------------------------------------------------------------------
# The workload.  50 keys per table (svc: n1..n10 x zones 1..5, kv: 1..50),
# hit by every script.  Committed values are never negative and never
# carry an abort marker; aborted work writes negative values or markers.
# ---------------------------------------------------------------------
my %scripts = (
	# single-row upserts, both tables
	'001_upsert@4' => q{
\set n random(1, 10)
\set z random(1, 5)
\set k random(1, 50)
INSERT INTO svc (name, zone, val) VALUES ('n' || :n, :z, 'c' || :client_id)
  ON CONFLICT (name, zone) DO UPDATE SET val = excluded.val;
INSERT INTO kv (id, val) VALUES (:k, :client_id)
  ON CONFLICT (id) DO UPDATE SET val = kv.val + 1;
},
	# multi-row statements: a range upsert and a multi-row update
	'002_multirow@3' => q{
\set k random(1, 46)
\set n random(1, 10)
INSERT INTO kv (id, val) SELECT g, :client_id FROM generate_series(:k, :k + 4) g
  ON CONFLICT (id) DO UPDATE SET val = kv.val + 1;
UPDATE svc SET val = 'm' || :client_id WHERE name = 'n' || :n;
},
	# deletes: single and multi-row
	'003_delete@3' => q{
\set k random(1, 48)
\set n random(1, 10)
\set z random(1, 5)
DELETE FROM kv WHERE id BETWEEN :k AND :k + 2;
DELETE FROM svc WHERE name = 'n' || :n AND zone = :z;
},
	# savepoints: the rolled-back part must leave no trace
	'004_savepoint@2' => q{
\set k1 random(1, 50)
\set k2 random(1, 50)
\set n random(1, 10)
\set z random(1, 5)
BEGIN;
UPDATE kv SET val = val + 1 WHERE id = :k1;
SAVEPOINT a;
DELETE FROM kv WHERE id = :k2;
INSERT INTO svc (name, zone, val) VALUES ('n' || :n, :z, 'rolledback')
  ON CONFLICT (name, zone) DO UPDATE SET val = 'rolledback';
UPDATE kv SET val = -3000 WHERE id = :k1;
ROLLBACK TO SAVEPOINT a;
INSERT INTO kv (id, val) VALUES (:k2, 0) ON CONFLICT (id) DO UPDATE SET val = kv.val + 1;
SAVEPOINT b;
UPDATE svc SET val = 'sp' WHERE name = 'n' || :n AND zone = :z;
RELEASE SAVEPOINT b;
COMMIT;
},
	# one key changed repeatedly in one transaction (coalesced in the log),
	# sometimes ending deleted, sometimes re-inserted after its deletion
	'005_repeat@2' => q{
\set k random(1, 50)
\set again random(0, 1)
BEGIN;
INSERT INTO kv (id, val) VALUES (:k, 1) ON CONFLICT (id) DO UPDATE SET val = 1;
UPDATE kv SET val = val + 10 WHERE id = :k;
DELETE FROM kv WHERE id = :k;
\if :again
INSERT INTO kv (id, val) VALUES (:k, 2) ON CONFLICT (id) DO UPDATE SET val = 2;
\endif
COMMIT;
},
	# key-changing updates (a delete of the old key plus an insert of the new)
	'006_rekey@2' => q{
\set k1 random(1, 50)
\set k2 random(1, 50)
\set n random(1, 10)
\set z1 random(1, 5)
\set z2 random(1, 5)
DO $$ BEGIN UPDATE kv SET id = :k2 WHERE id = :k1;
  EXCEPTION WHEN unique_violation THEN NULL; END $$;
DO $$ BEGIN UPDATE svc SET zone = :z2 WHERE name = 'n' || :n AND zone = :z1;
  EXCEPTION WHEN unique_violation THEN NULL; END $$;
},
	# an explicitly rolled-back transaction
	'007_rollback@1' => q{
\set k random(1, 50)
\set n random(1, 10)
\set z random(1, 5)
BEGIN;
UPDATE kv SET val = -2000 WHERE id = :k;
INSERT INTO svc (name, zone, val) VALUES ('n' || :n, :z, 'rolledback')
  ON CONFLICT (name, zone) DO UPDATE SET val = 'rolledback';
DELETE FROM kv WHERE id = (:k % 50) + 1;
ROLLBACK;
},
	# a failing block whose error is caught: its writes are undone, the
	# statement after it in the same transaction commits
	'008_failing_block@1' => q{
\set k random(1, 50)
\set n random(1, 10)
DO $$
BEGIN
  BEGIN
    UPDATE svc SET val = 'sub-aborted' WHERE name = 'n' || :n;
    DELETE FROM kv WHERE id = :k;
    INSERT INTO kv (id, val) VALUES (:k, -1000) ON CONFLICT (id) DO UPDATE SET val = -1000;
    PERFORM 1 / 0;
  EXCEPTION WHEN division_by_zero THEN NULL;
  END;
  UPDATE kv SET val = val + 1 WHERE id = (:k % 50) + 1;
END $$;
},
);

# Top-level transactions that fail with an error, run by a separate psql
# session (pgbench would abort the client on the error) while pgbench runs.
srand(20240601);
my $failing = '';
for my $i (1 .. 400)
{
	my $k = 1 + int(rand(50));
	my $k2 = 1 + int(rand(50));
	my $n = 1 + int(rand(10));
	my $z = 1 + int(rand(5));
	$failing .= qq{BEGIN;
UPDATE kv SET val = -4000 WHERE id = $k;
INSERT INTO svc (name, zone, val) VALUES ('n$n', $z, 'aborted')
  ON CONFLICT (name, zone) DO UPDATE SET val = 'aborted';
DELETE FROM kv WHERE id = $k2;
SELECT 1 / 0;
COMMIT;
};
}
my $failing_file = $node->basedir . '/failing.sql';
append_to_file($failing_file, $failing);
my ($fout, $ferr) = ('', '');
my $fail_h = IPC::Run::start(
	[
		'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=0',
		'-d', $node->connstr('postgres'),
		'-f', $failing_file
	],
	'<', \undef, '>', \$fout, '2>', \$ferr);

my $clients = 8;
my $per_client = 400;
my $total = $clients * $per_client;
$node->pgbench(
	"-n -c $clients -j 4 -t $per_client --max-tries=1000",
	0,
	[
		qr{number of transactions actually processed: $total/$total},
		qr{number of failed transactions: 0 \(}
	],
	[qr{^(?!.*aborted)}s],
	'pgbench workload completes without failed transactions',
	\%scripts);

ok($fail_h->finish, 'psql with failing transactions exits normally');
my @errors = ($ferr =~ /ERROR:\s+(.*)/g);
my @div = grep { /^division by zero/ } @errors;
my @other = grep {
	!/^division by zero/
	  && !/^current transaction is aborted/
	  && !/^deadlock detected/
	  && !/concurrently/
} @errors;
cmp_ok(scalar(@div), '>', 0, 'failing transactions did fail by division by zero');
is(join("\n", @other), '', 'failing transactions raised no unexpected error');

# ---------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------
is($node->safe_psql('postgres', 'SELECT * FROM registry.verify()'),
	'', 'verify() reports no inconsistency after the concurrent workload');

is( $node->safe_psql(
		'postgres', q{
SELECT (SELECT count(*) FROM kv WHERE val < 0)
     + (SELECT count(*) FROM svc WHERE val IN ('aborted', 'sub-aborted', 'rolledback'))}
	),
	'0',
	'no write of an aborted transaction or rolled-back savepoint is visible');

cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM kv'),
	'>', 0, 'kv has rows after the workload');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM svc'),
	'>', 0, 'svc has rows after the workload');

# change log: contiguous, complete, one entry per committed key change
my ($first, $last, $used, $overwritten, $truncations) = split /\|/,
  $node->safe_psql('postgres',
	'SELECT first_seq, last_seq, change_log_used, change_log_overwritten, change_log_truncations FROM registry.node'
  );
is($overwritten, 0, 'change log ring did not overflow (all changes kept)');
is($truncations, 0, 'change log was never truncated');
is($first, 1, 'change log starts at seq 1');
is( $node->safe_psql(
		'postgres',
		'SELECT count(*), min(seq), max(seq), max(seq) - min(seq) + 1 FROM registry.change_log'
	),
	join('|', $last - $first + 1, $first, $last, $last - $first + 1),
	'change log seqs are contiguous from first_seq to last_seq');
is($used, $last - $first + 1, 'change_log_used matches the seq range');
is($node->safe_psql('postgres', 'SELECT sum(changes) FROM registry.tables'),
	$last, 'per-table change counters add up to last_seq');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM registry.change_log
		  WHERE table_name NOT IN ('public.kv', 'public.svc') OR key IS NULL
		     OR op NOT IN ('insert', 'update', 'delete') OR origin <> 'conc'}
	),
	'0',
	'every change log entry is a keyed insert/update/delete of a registry table by this node'
);

# Per key, the change log must be in commit order, so versions strictly
# increase with seq (a change is published while its transaction is still
# invisible to others, 4ac22c4, so a later writer of the key cannot take a
# smaller seq).  The op names must agree with the key's previous state
# (insert iff it was not live), taking the history in version order.
# change_log_pairs($order, $where): each change next to the key's previous
# one in $order, those matching $where, one line each.
sub change_log_pairs
{
	my ($order, $where) = @_;
	return $node->safe_psql(
		'postgres', qq{
SELECT string_agg(format('%s %s: seq %s %s %s after seq %s %s %s',
                         table_name, key, seq, op, version,
                         prev_seq, prev_op, prev_version), E'\\n')
FROM (
  SELECT table_name, key, seq, version, op,
         lag(seq) OVER w AS prev_seq,
         lag(version) OVER w AS prev_version, lag(op) OVER w AS prev_op
  FROM registry.change_log
  WINDOW w AS (PARTITION BY table_name, key ORDER BY $order)) s
WHERE $where});
}
is(change_log_pairs('seq', 'prev_version IS NOT NULL AND version <= prev_version'),
	'', 'change log is in commit order: each key\'s versions strictly increase with seq');
is( change_log_pairs(
		'version', q{op IN ('insert', 'update')
  AND (op = 'insert') <> (prev_op IS NULL OR prev_op = 'delete')}),
	'',
	'in version order, insert/update ops match whether the key was live before');

my $all_versions = q{
  (SELECT 'public.kv' AS table_name, * FROM registry.versions('kv')
   UNION ALL
   SELECT 'public.svc', * FROM registry.versions('svc')) };

# the newest change log entry of every key is its current state, and
# every key has one
is( $node->safe_psql(
		'postgres', qq{
SELECT string_agg(coalesce(l.table_name, v.table_name) || ' ' || coalesce(l.key, v.key), ', ')
FROM (SELECT DISTINCT ON (table_name, key) table_name, key, op, version, origin
      FROM registry.change_log ORDER BY table_name, key, version DESC) l
FULL JOIN $all_versions v USING (table_name, key)
WHERE l.version IS DISTINCT FROM v.version OR l.origin IS DISTINCT FROM v.origin
   OR (l.op = 'delete') IS DISTINCT FROM v.deleted}),
	'',
	'the newest change log entry of every key equals its version in registry.versions'
);

# rows and registry.versions
for my $t (['kv', q{id::text}], ['svc', q{'(' || name || ',' || zone || ')'}])
{
	my ($tbl, $keyexpr) = @$t;
	is( $node->safe_psql(
			'postgres',
			"SELECT count(*) FROM $tbl WHERE registry_version IS NULL OR registry_origin IS NULL"
		),
		'0',
		"$tbl: every row carries a version and an origin");
	is( $node->safe_psql(
			'postgres', qq{
SELECT count(*) FROM
  (SELECT key, version, origin FROM registry.versions('$tbl') WHERE NOT deleted) v
  FULL JOIN
  (SELECT $keyexpr AS key, registry_version AS version, registry_origin AS origin FROM $tbl) r
  USING (key)
WHERE v.version IS DISTINCT FROM r.version OR v.origin IS DISTINCT FROM r.origin}
		),
		'0',
		"$tbl: live keys of registry.versions are exactly the rows, with their versions"
	);
	is( $node->safe_psql(
			'postgres', qq{
SELECT (SELECT count(*) FROM registry.versions('$tbl') WHERE NOT deleted)
     - (SELECT count(*) FROM $tbl)}
		),
		'0',
		"$tbl: as many live keys as rows");
	is( $node->safe_psql(
			'postgres',
			"SELECT count(*) FROM (SELECT key FROM registry.versions('$tbl') GROUP BY key HAVING count(*) > 1) d"
		),
		'0',
		"$tbl: no key is both live and deleted (or listed twice)");
	is( $node->safe_psql(
			'postgres',
			"SELECT count(*) FROM registry.versions('$tbl') WHERE version IS NULL OR origin <> 'conc'"
		),
		'0',
		"$tbl: every key has a version from this node");
	is( $node->safe_psql(
			'postgres', qq{
SELECT t.rows = v.live AND t.tombstones = v.dead
FROM registry.tables t,
     (SELECT count(*) FILTER (WHERE NOT deleted) AS live,
             count(*) FILTER (WHERE deleted) AS dead
      FROM registry.versions('$tbl')) v
WHERE t.table_name = 'public.$tbl'}
		),
		't',
		"$tbl: registry.tables rows and tombstones match registry.versions");
}
cmp_ok(
	$node->safe_psql(
		'postgres', "SELECT count(*) FROM $all_versions v WHERE deleted"),
	'>', 0,
	'the workload left tombstones');

# acceptors: 100 keys through 16 slots
my ($acap, $aused, $aevict) = split /\|/,
  $node->safe_psql('postgres',
	'SELECT acceptor_capacity, acceptors_used, acceptor_evictions FROM registry.node'
  );
cmp_ok($aevict, '>', 0, 'acceptors were evicted (100 keys, 16 acceptors)');
cmp_ok($aused, '<=', $acap, 'acceptors_used <= acceptor_capacity');
is($node->safe_psql('postgres', 'SELECT count(*) FROM registry.acceptors'),
	$aused, 'registry.acceptors lists acceptors_used entries');
is( $node->safe_psql(
		'postgres', qq{
SELECT count(*) FROM registry.acceptors a
LEFT JOIN $all_versions v USING (table_name, key)
WHERE v.version IS DISTINCT FROM a.version OR v.origin IS DISTINCT FROM a.origin
   OR (a.op = 'delete') IS DISTINCT FROM v.deleted}),
	'0',
	'every acceptor holds its key\'s current version, origin and deletedness');

$node->stop;
done_testing();
