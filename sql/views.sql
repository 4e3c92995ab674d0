-- The views after a scripted sequence: acceptors (per-key history),
-- change log, tables, node counters.

CREATE TABLE vw (id int PRIMARY KEY, v text);
SELECT registry.replicate('vw');
CREATE TEMP TABLE s0 AS SELECT last_seq FROM registry.node;
INSERT INTO vw VALUES (1, 'a');
UPDATE vw SET v = 'b' WHERE id = 1;
UPDATE vw SET v = 'c' WHERE id = 1;
DELETE FROM vw WHERE id = 1;
INSERT INTO vw VALUES (1, 'again');
INSERT INTO vw VALUES (2, 'x');
SELECT registry.apply_row('vw', '3', registry.hlc_now() + 100, 'n9', false, '{"id": 3, "v": "remote"}');

SELECT l.seq - s.last_seq AS n, l.table_name, l.key, l.op, l.origin,
       l.committed_at <= now() + interval '1 minute' AS sane_time
  FROM registry.change_log l, s0 s WHERE l.seq > s.last_seq ORDER BY l.seq;

-- each key's latest version and its last registry.acceptor_ops (4) operations
SELECT key, op, origin, changes, jsonb_path_query_array(history, '$[*].op') AS ops,
       (history->-1->>'version')::bigint = version AS latest_is_last
  FROM registry.acceptors WHERE table_name = 'public.vw' ORDER BY key;
-- the history's versions increase
SELECT key, bool_and(b > a) AS increasing FROM (
    SELECT key, lag((h->>'version')::bigint) OVER (PARTITION BY key ORDER BY n) AS a,
           (h->>'version')::bigint AS b
      FROM registry.acceptors, jsonb_array_elements(history) WITH ORDINALITY AS x(h, n)
     WHERE table_name = 'public.vw') y
 WHERE a IS NOT NULL GROUP BY key ORDER BY key;
-- and the acceptor's version is the key's
SELECT count(*) AS mismatched FROM registry.acceptors a
  JOIN registry.versions('vw') v USING (key)
 WHERE a.table_name = 'public.vw' AND a.version <> v.version;

SELECT table_name, rows, tombstones, changes, length(digest_root) AS root_len,
       last_change IS NOT NULL AS has_last_change
  FROM registry.tables WHERE table_name = 'public.vw';

-- acceptors are bounded (64 here): the least recently changed are evicted
CREATE TEMP TABLE e0 AS SELECT acceptor_evictions FROM registry.node;
INSERT INTO vw SELECT g, 'bulk' FROM generate_series(100, 199) g;
SELECT acceptors_used <= acceptor_capacity AS bounded,
       acceptor_evictions > (SELECT acceptor_evictions FROM e0) AS evicted
  FROM registry.node;
-- the most recent keys are kept
SELECT count(*) FROM registry.acceptors WHERE table_name = 'public.vw' AND key IN ('199', '198');

-- node: capacities, use, counters
SELECT node_name, state, tables_used >= (SELECT count(*) FROM registry.tables) AS tables_covered,
       origins_used, change_log_used <= change_log_capacity AS log_bounded,
       last_seq >= first_seq - 1 AS seqs_sane, clock > 0 AS clock_set,
       clock_lease >= clock AS lease_covers_clock, clock_ready
  FROM registry.node;

SELECT * FROM registry.verify();
DROP TABLE vw;

-- keys without a parser: a composite key's column values, and its row
CREATE TABLE vk (name text, zone int, info text, PRIMARY KEY (name, zone));
SELECT registry.replicate('vk');
INSERT INTO vk VALUES ('looks,composite', 1, 'one'), ('plain', 2, 'two'), ('q"uote\', 3, 'three');
SELECT key, registry.key_values('vk', key) AS key_values
  FROM registry.versions('vk') ORDER BY key;
SELECT key_values FROM registry.change_log WHERE table_name = 'public.vk' ORDER BY seq;
SELECT registry.get_row('vk', '("looks,composite",1)') - 'registry_version' AS found,
       registry.get_row('vk', '(absent,9)') AS absent;
SELECT registry.key_values('vk', 'not a key');
DROP TABLE vk;

-- get_row with keys of types of the user's own (read in the canonical
-- settings, whatever the caller's search_path), the row shown in the
-- caller's settings (its time zone here)
CREATE SCHEMA vt;
CREATE TYPE vt.mood AS ENUM ('calm', 'busy');
CREATE DOMAIN vt.zone_no AS int CHECK (VALUE > 0);
CREATE TABLE vm (m vt.mood, z vt.zone_no, at timestamptz, PRIMARY KEY (m, z));
SELECT registry.replicate('vm');
INSERT INTO vm VALUES ('busy', 7, '2026-01-02 03:04:05+00');
-- neither the types nor the table are on the caller's path
SET search_path = pg_catalog;
SET TimeZone = 'Asia/Tokyo';
SELECT registry.get_row('public.vm', key) - 'registry_version' AS row_in_tokyo
  FROM registry.versions('public.vm');
RESET TimeZone;
SELECT registry.get_row('public.vm', '(calm,7)') AS absent;
RESET search_path;
DROP TABLE vm;
DROP SCHEMA vt CASCADE;

-- the readers in a query that could run in parallel: planned without
-- workers, so they never run in parallel mode (where PostgreSQL refuses
-- the snapshot they read under)
CREATE TABLE vp (k int PRIMARY KEY, v text);
SELECT registry.replicate('vp');
INSERT INTO vp SELECT g, 'v' || g FROM generate_series(1, 2000) g;
CREATE TABLE vbig AS SELECT g AS k FROM generate_series(1, 20000) g;
ANALYZE vp, vbig;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
-- where a parallel worker would filter: the plan shows no Gather
EXPLAIN (COSTS OFF)
SELECT count(*) FROM vbig b WHERE registry.key_values('vp', b.k::text) IS NOT NULL;
SELECT count(*) FROM vbig b WHERE registry.key_values('vp', b.k::text) IS NOT NULL;
-- where the leader would read after a Gather started its workers: none
EXPLAIN (COSTS OFF)
SELECT b.k, registry.get_row('vp', b.k::text) ->> 'v' AS v,
       (SELECT count(*) FROM registry.versions('vp') x WHERE x.key = b.k::text) AS versions
  FROM vbig b WHERE b.k <= 2 ORDER BY b.k;
SELECT b.k, registry.get_row('vp', b.k::text) ->> 'v' AS v,
       (SELECT count(*) FROM registry.versions('vp') x WHERE x.key = b.k::text) AS versions,
       (SELECT count(*) FROM registry.tables WHERE table_name = 'public.vp') AS tables,
       (SELECT count(*) FROM registry.node WHERE state = 'ready') AS node,
       (SELECT count(*) FROM registry.change_log WHERE seq < 0) AS change_log,
       (SELECT count(*) FROM registry.acceptors WHERE version < 0) AS acceptors,
       (SELECT count(*) FROM registry.peer_status WHERE rounds < 0) AS peer_status
  FROM vbig b WHERE b.k <= 2 ORDER BY b.k;
-- what stays PARALLEL SAFE is still run by parallel workers
EXPLAIN (COSTS OFF) SELECT count(*) FROM vbig WHERE registry.key_hash(k) > 0;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
DROP TABLE vp, vbig;
