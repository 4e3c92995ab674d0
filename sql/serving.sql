-- The functions peers call, on one node: changes_since, digest,
-- bucket_entries, fetch_rows, table_pages, and the message format.

CREATE TABLE srv (name text, zone int, info jsonb, PRIMARY KEY (name, zone));
SELECT registry.replicate('srv');
CREATE TEMP TABLE s0 AS SELECT last_seq, epoch FROM registry.node;
INSERT INTO srv VALUES ('a', 1, '{"w": 1}'), ('b', 1, NULL), ('c d', 2, '[]');
UPDATE srv SET info = '{"w": 2}' WHERE name = 'a';
DELETE FROM srv WHERE name = 'b';

-- changes after a seq, in order, with the epoch
CREATE FUNCTION changes(after bigint, maxc int DEFAULT 100, rows bool DEFAULT false,
                        ep bigint DEFAULT NULL, excl text DEFAULT NULL)
RETURNS jsonb LANGUAGE sql AS $$
    SELECT registry.decode_message(registry.changes_since(after, maxc, rows, ep, excl))
$$;
SELECT m->>'status' AS status, (m->>'epoch')::bigint = (SELECT epoch FROM s0) AS our_epoch,
       (m->>'upto_seq')::bigint - (SELECT last_seq FROM s0) AS upto,
       jsonb_array_length(m->'changes') AS n
  FROM changes((SELECT last_seq FROM s0)) m;
SELECT c->>'seq' IS NOT NULL AS has_seq, c->>'table' AS tbl, c->>'key' AS key, c->>'op' AS op,
       c->>'origin' AS origin
  FROM changes((SELECT last_seq FROM s0)) m, jsonb_array_elements(m->'changes') c;
-- with rows: each change carries the key's current state and version
SELECT c->>'key' AS key, c->'row'->>'state' AS state, c->'row'->'values' AS "values",
       (c->'row'->>'version')::bigint = v.version AS current_version
  FROM changes((SELECT last_seq FROM s0), 100, true) m,
       jsonb_array_elements(m->'changes') c
  LEFT JOIN registry.versions('srv') v ON v.key = c->>'key';
SELECT m->'tables' AS tables FROM changes((SELECT last_seq FROM s0), 100, true) m;
-- at most max_changes, resuming from upto_seq
SELECT jsonb_array_length(m->'changes') AS n,
       (m->>'upto_seq')::bigint - (SELECT last_seq FROM s0) AS upto
  FROM changes((SELECT last_seq FROM s0), 2) m;
-- our own origin can be left out
SELECT jsonb_array_length(m->'changes') AS n,
       (m->>'upto_seq')::bigint - (SELECT last_seq FROM s0) AS upto
  FROM changes((SELECT last_seq FROM s0), 100, false, NULL, 'regress') m;
-- a caller from another epoch, or ahead of us, is told so
SELECT m->>'status' AS status, jsonb_array_length(m->'changes') AS n
  FROM changes(0, 100, false, 12345) m;
SELECT m->>'status' AS status FROM changes((SELECT last_seq + 1000 FROM registry.node)) m;
SELECT registry.changes_since(-1);
-- a caller whose seq fell out of the ring (64 entries here) is told so
INSERT INTO srv SELECT 'bulk' || g, g FROM generate_series(1, 70) g;
SELECT m->>'status' AS status, jsonb_array_length(m->'changes') AS n,
       (m->>'first_seq')::bigint > (SELECT last_seq FROM s0) + 1 AS ring_moved
  FROM changes((SELECT last_seq FROM s0)) m;
SELECT change_log_truncations > 0 AS truncated FROM registry.node;
DELETE FROM srv WHERE name LIKE 'bulk%';
SELECT change_log_used <= change_log_capacity AS bounded, change_log_overwritten > 0 AS overwrote
  FROM registry.node;

-- digests: the root equals the tables view, ranges combine to the root
CREATE FUNCTION dig(nb int DEFAULT 0, lo int DEFAULT 0, w int DEFAULT 0, n int DEFAULT 0)
RETURNS jsonb LANGUAGE sql AS $$
    SELECT registry.decode_message(registry.digest('public.srv', nb, lo, w, n))
$$;
SELECT d->>'root' = t.digest_root AS root_matches, d->>'buckets' AS buckets,
       (d->>'live')::int = t.rows AS live_matches,
       (d->>'tombstones')::int = t.tombstones AS tombs_matches
  FROM dig() d, registry.tables t WHERE t.table_name = 'public.srv';
CREATE FUNCTION xor_hex(text[]) RETURNS text LANGUAGE sql AS $$
    SELECT lpad(to_hex(bit_xor(('x' || h)::bit(64)::bigint)), 16, '0') FROM unnest($1) h
$$;
SELECT xor_hex(ARRAY(SELECT jsonb_array_elements_text(d->'digests'))) = d->>'root' AS buckets_xor_to_root,
       jsonb_array_length(d->'digests') AS n
  FROM dig(16, 0, 1, 16) d;
SELECT xor_hex(ARRAY(SELECT jsonb_array_elements_text(d->'digests'))) = d->>'root' AS groups_xor_to_root,
       d->>'buckets' AS buckets
  FROM dig(4, 0, 1, 4) d;
SELECT d->'digests'->>0 = d->>'root' AS one_range_is_root FROM dig(16, 0, 16, 1) d;
-- a finer granularity than ours is answered at ours
SELECT d->>'buckets' AS buckets FROM dig(1024) d;
-- bad ranges and unknown tables
SELECT dig(16, 10, 4, 2);
SELECT dig(3);
SELECT registry.digest('public.nosuch');
SELECT registry.digest('nosuch');
CREATE TABLE unreg (id int PRIMARY KEY);
SELECT registry.digest('public.unreg');

-- bucket entries: every key with its version, rows and tombstones
CREATE FUNCTION entries(nb int, b int[], rows bool DEFAULT false, after int DEFAULT NULL,
                        maxe int DEFAULT 10000)
RETURNS jsonb LANGUAGE sql AS $$
    SELECT registry.decode_message(registry.bucket_entries('public.srv', nb, b, rows, after, maxe))
$$;
SELECT e->>'key' AS key, e->>'state' AS state, e->'values' AS "values",
       (e->>'version')::bigint = v.version AS version_matches
  FROM entries(1, '{0}', true) m, jsonb_array_elements(m->'entries') e
  JOIN registry.versions('srv') v ON v.key = e->>'key'
 WHERE e->>'key' NOT LIKE '(bulk%'
 ORDER BY 1;
SELECT jsonb_array_length(m->'entries') AS n, m->>'more' AS more
  FROM entries(1, '{0}') m;
-- the buckets of any granularity partition the keys
SELECT sum(jsonb_array_length(m->'entries')) AS total
  FROM generate_series(0, 7) b, entries(8, ARRAY[b]) m;
-- paging: follow after_hash until done; every key exactly once
CREATE FUNCTION all_pages(maxe int) RETURNS TABLE (page int, key text) LANGUAGE plpgsql AS $$
DECLARE
    m jsonb;
    after int := NULL;
    p int := 0;
BEGIN
    LOOP
        m := entries(1, '{0}', false, after, maxe);
        p := p + 1;
        RETURN QUERY SELECT p, e->>'key' FROM jsonb_array_elements(m->'entries') e;
        EXIT WHEN NOT (m->>'more')::boolean;
        after := (m->>'after_hash')::int;
    END LOOP;
END $$;
SELECT count(*) AS keys, count(DISTINCT key) AS distinct_keys, max(page) AS pages
  FROM all_pages(10);
SELECT entries(0, '{0}');
SELECT entries(8, '{8}');

-- fetch_rows: live with the row, tombstone, or absent
SELECT r->>'key' AS key, r->>'state' AS state, r->'values' AS "values", r->>'origin' AS origin
  FROM jsonb_array_elements(registry.decode_message(
         registry.fetch_rows('public.srv', '{"(a,1)","(b,1)","(\"c d\",2)","(zz,9)"}')) -> 'rows') r;
SELECT registry.fetch_rows('public.srv', '{"(a,1"}');
SELECT registry.fetch_rows('public.srv', '{"a"}');
SELECT registry.fetch_rows('public.srv', '{"(a,notanumber)"}');
SELECT registry.fetch_rows('public.srv', '{NULL}');

-- table_pages: the whole table under one snapshot, page by page: live rows
-- in primary-key order, then tombstones; each page an entries message
CREATE TABLE srvp (id int PRIMARY KEY, v text);
SELECT registry.replicate('srvp');
INSERT INTO srvp SELECT g, 'v' || g FROM generate_series(25, 1, -1) g;
DELETE FROM srvp WHERE id IN (3, 17);
SELECT n, m->>'kind' AS kind, m->>'buckets' AS buckets, m->>'more' AS more,
       (SELECT string_agg(e->>'key' || left(e->>'state', 1), ' ')
          FROM jsonb_array_elements(m->'entries') e) AS entries
  FROM (SELECT row_number() OVER () AS n, registry.decode_message(p) AS m
          FROM (SELECT registry.table_pages('public.srvp', 10) AS p) x) y;
-- every entry carries its version and, for rows, its values
SELECT count(*) AS entries, bool_and((e->>'version')::bigint = v.version) AS versions_match,
       bool_and(e->>'state' = 'tombstone' OR e->'values' = jsonb_build_array(e->>'key', 'v' || (e->>'key'))) AS values_match
  FROM (SELECT registry.table_pages('public.srvp', 7) AS p) x,
       jsonb_array_elements(registry.decode_message(p)->'entries') e
  JOIN registry.versions('srvp') v ON v.key = e->>'key';
-- a page count that divides the entries exactly ends without an empty page
SELECT count(*) AS pages FROM (SELECT registry.table_pages('public.srvp', 25)) x;
SELECT count(*) AS pages FROM (SELECT registry.table_pages('public.srvp', 0)) x;
CREATE TABLE srvp0 (id int PRIMARY KEY);
SELECT registry.replicate('srvp0');
SELECT count(*) AS pages FROM (SELECT registry.table_pages('public.srvp0')) x;
SELECT registry.table_pages('public.nosuch', 10);
SELECT registry.table_pages(NULL, 10);
SELECT registry.table_pages('public.srvp', NULL);
SELECT registry.unreplicate('srvp'), registry.unreplicate('srvp0');
DROP TABLE srvp, srvp0;

-- values travel in canonical settings whatever the caller's
CREATE TABLE srvt (id int PRIMARY KEY, at timestamptz, f float8, d date);
SELECT registry.replicate('srvt');
INSERT INTO srvt VALUES (1, '2026-01-02 03:04:05+00', 0.1, '2026-01-02');
SET TimeZone = 'Asia/Kolkata';
SET DateStyle = 'SQL, DMY';
SET extra_float_digits = -2;
SELECT r->'values' AS "values"
  FROM jsonb_array_elements(registry.decode_message(
         registry.fetch_rows('public.srvt', '{1}')) -> 'rows') r;
RESET ALL;

-- large answers are compressed, and decode the same
SET registry.compress_threshold = 0;
CREATE TEMP TABLE c1 AS SELECT registry.fetch_rows('public.srv', ARRAY(SELECT '(k' || g || ',1)' FROM generate_series(1, 200) g)) AS m;
SET registry.compress_threshold = -1;
CREATE TEMP TABLE c2 AS SELECT registry.fetch_rows('public.srv', ARRAY(SELECT '(k' || g || ',1)' FROM generate_series(1, 200) g)) AS m;
RESET registry.compress_threshold;
SELECT get_byte(c1.m, 3) AS compressed_flag, get_byte(c2.m, 3) AS plain_flag,
       length(c1.m) < length(c2.m) / 4 AS much_smaller,
       registry.decode_message(c1.m) = registry.decode_message(c2.m) AS same_content
  FROM c1, c2;

-- beyond 64 kB, high-entropy values (random hex) switch to Huffman coding
-- only: still one zlib stream, nearly as small as level 1 makes it (0.57
-- here against 0.53), that decodes to the same message
CREATE TABLE srvhex (id int PRIMARY KEY, v text);
SELECT registry.replicate('srvhex');
INSERT INTO srvhex SELECT g, md5(g || 'a') || md5(g || 'b') || md5(g || 'c') || md5(g || 'd')
  FROM generate_series(1, 1000) g;
SET registry.compress_threshold = 0;
CREATE TEMP TABLE c3 AS SELECT registry.bucket_entries('public.srvhex', 1, '{0}', true, NULL, 5000) AS m;
SET registry.compress_threshold = -1;
CREATE TEMP TABLE c4 AS SELECT registry.bucket_entries('public.srvhex', 1, '{0}', true, NULL, 5000) AS m;
RESET registry.compress_threshold;
SELECT get_byte(c3.m, 3) AS compressed_flag, length(c4.m) > 131072 AS large,
       length(c3.m) < length(c4.m) * 0.6 AS compressed,
       registry.decode_message(c3.m) = registry.decode_message(c4.m) AS same_content,
       jsonb_array_length(registry.decode_message(c3.m)->'entries') AS entries
  FROM c3, c4;
-- table_pages compresses its pages the same way, page after page (each
-- page reuses the buffer of the one before)
SET registry.compress_threshold = 0;
CREATE TEMP TABLE p3 AS SELECT row_number() OVER () AS n, p
  FROM (SELECT registry.table_pages('public.srvhex', 600) AS p) x;
SET registry.compress_threshold = -1;
CREATE TEMP TABLE p4 AS SELECT row_number() OVER () AS n, p
  FROM (SELECT registry.table_pages('public.srvhex', 600) AS p) x;
RESET registry.compress_threshold;
SELECT n, get_byte(p3.p, 3) AS compressed_flag, get_byte(p4.p, 3) AS raw_flag,
       length(p3.p) < length(p4.p) * 0.6 AS compressed,
       registry.decode_message(p3.p) = registry.decode_message(p4.p) AS same_content,
       jsonb_array_length(registry.decode_message(p3.p)->'entries') AS entries,
       (registry.decode_message(p3.p)->'entries'->0->>'key')::int AS first_key
  FROM p3 JOIN p4 USING (n) ORDER BY n;
SELECT registry.unreplicate('srvhex');
DROP TABLE srvhex;

-- malformed messages are errors, never crashes
SELECT registry.decode_message('\x00'::bytea);
SELECT registry.decode_message('\x5201430000000010'::bytea);
SELECT registry.decode_message(substr(m, 1, length(m) - 3)) FROM c2;
SELECT registry.decode_message(overlay(m placing '\xff'::bytea from 9 for 1)) FROM c1;
SELECT registry.decode_message('\x5202430000000000'::bytea);

-- long polling: while waiting, the caller's own changes are stepped over;
-- the answer comes when the wait ends, empty, with upto_seq past them
CREATE TABLE lp (k int PRIMARY KEY);
SELECT registry.replicate('lp');
CREATE TEMP TABLE s1 AS SELECT last_seq FROM registry.node;
INSERT INTO lp VALUES (1), (2);
SELECT m->>'status' AS status, jsonb_array_length(m->'changes') AS n,
       (m->>'upto_seq')::bigint - (SELECT last_seq FROM s1) AS upto
  FROM registry.decode_message(registry.changes_since((SELECT last_seq FROM s1), 100, false,
                                                      NULL, 'regress', 20)) m;
-- a change from elsewhere is sent without waiting (the statement would
-- time out if the 60 s wait ran), and is the only one sent
SELECT registry.apply_row('lp', '3', registry.hlc_now(), 'n9', false, '{"k": 3}');
SET statement_timeout = '30s';
SELECT m->>'status' AS status, c->>'key' AS key, c->>'origin' AS origin,
       (m->>'upto_seq')::bigint - (SELECT last_seq FROM s1) AS upto
  FROM registry.decode_message(registry.changes_since((SELECT last_seq FROM s1), 100, false,
                                                      NULL, 'regress', 60000)) m,
       jsonb_array_elements(m->'changes') c;
RESET statement_timeout;
DROP TABLE lp, s1;

-- arguments that must be given are checked, not dereferenced
SELECT registry.digest(NULL);
SELECT registry.bucket_entries(NULL, 1, '{0}');
SELECT registry.bucket_entries('public.srv', NULL, '{0}');
SELECT registry.bucket_entries('public.srv', 1, NULL);
SELECT registry.fetch_rows(NULL, '{1}');
SELECT registry.fetch_rows('public.srv', NULL);

-- column types outside pg_catalog are named schema-qualified, whatever
-- the search_path: peers compare the names
CREATE SCHEMA elsewhere;
CREATE TYPE elsewhere.mood AS ENUM ('sad', 'ok');
SET search_path = elsewhere, public;
CREATE TABLE public.typed (id int, m elsewhere.mood, t text, PRIMARY KEY (id, m));
SELECT registry.replicate('typed');
INSERT INTO typed VALUES (1, 'ok', 'x');
-- DDL is not mistaken for a key change, and the table's description
-- names the type in full
ALTER TABLE typed ADD COLUMN extra int;
UPDATE typed SET extra = 1;
SELECT c->>'name' AS col, c->>'type' AS type
  FROM jsonb_array_elements(registry.decode_message(registry.changes_since((SELECT last_seq - 1 FROM registry.node), 10, true))->'tables') t,
       jsonb_array_elements(t->'columns') c WHERE t->>'name' = 'public.typed';
RESET search_path;
SELECT key_types FROM registry.tables WHERE table_name = 'public.typed';

SELECT * FROM registry.verify();
DROP TABLE typed;
DROP SCHEMA elsewhere CASCADE;
DROP FUNCTION changes(bigint, int, bool, bigint, text), dig(int, int, int, int),
    xor_hex(text[]), entries(int, int[], bool, int, int), all_pages(int);
DROP TABLE srv, srvt, unreg;

-- answers stay within the size the caller accepts (max_bytes, at least
-- 1 MB): a row too large for any answer goes without its values (state
-- "too large", with its version), every other row whole
CREATE TABLE big (k text PRIMARY KEY, v text);
SELECT registry.replicate('big');
INSERT INTO big VALUES ('a', 'small'), ('b', repeat('x', 1500000)), ('c', 'small too');
CREATE TEMP TABLE big_pages AS
    SELECT registry.table_pages('public.big', 10000, 1048576) AS p;
SELECT count(*) AS pages, max(length(p)) <= 8 + 1048576 AS within_limit FROM big_pages;
SELECT e->>'key' AS key, e->>'state' AS state, jsonb_array_length(e->'values') AS nvalues
  FROM big_pages, jsonb_array_elements(registry.decode_message(p)->'entries') e
 ORDER BY 1;
SELECT r->>'key' AS key, r->>'state' AS state
  FROM jsonb_array_elements(registry.decode_message(
       registry.fetch_rows('public.big', '{a,b,c}', 1048576))->'rows') r;
-- the first row that does not fit after others ends the answer; asked
-- again, it comes first, without its values
SELECT r->>'key' AS key, r->>'state' AS state
  FROM jsonb_array_elements(registry.decode_message(
       registry.fetch_rows('public.big', '{b,c}', 1048576))->'rows') r;
SELECT c->'row'->>'key' AS key, c->'row'->>'state' AS state
  FROM jsonb_array_elements(registry.decode_message(registry.changes_since(
       (SELECT last_seq - 3 FROM registry.node), 10, true, NULL, NULL, 0, 1048576))->'changes') c
 WHERE c->>'table' = 'public.big';
SELECT c->'row'->>'key' AS key, c->'row'->>'state' AS state
  FROM jsonb_array_elements(registry.decode_message(registry.changes_since(
       (SELECT last_seq - 2 FROM registry.node), 10, true, NULL, NULL, 0, 1048576))->'changes') c
 WHERE c->>'table' = 'public.big';
-- with many rows of half a megabyte, pages hold what fits and no row is lost
INSERT INTO big SELECT 'm' || i, repeat(md5(i::text), 16384) FROM generate_series(1, 6) i;
CREATE TEMP TABLE big_pages2 AS
    SELECT registry.table_pages('public.big', 10000, 1048576) AS p;
SELECT count(*) > 3 AS several_pages, max(length(p)) <= 8 + 1048576 AS within_limit FROM big_pages2;
SELECT count(*) AS entries, count(DISTINCT e->>'key') AS distinct_keys
  FROM big_pages2, jsonb_array_elements(registry.decode_message(p)->'entries') e;
DROP TABLE big, big_pages, big_pages2;

-- skip_origins: the origins the caller follows directly are left out too
-- (covered by upto_seq); two changes applied from nodes x and elsewhere
CREATE TABLE skp (k int PRIMARY KEY);
SELECT registry.replicate('skp');
CREATE TEMP TABLE s_skip AS SELECT last_seq FROM registry.node;
SELECT registry.apply_row('skp', '1', registry.hlc_now(), 'x', false, '{"k": 1}');
SELECT registry.apply_row('skp', '2', registry.hlc_now(), 'elsewhere', false, '{"k": 2}');
SELECT c->>'key' AS key, c->>'origin' AS origin,
       (m->>'upto_seq')::bigint - (SELECT last_seq FROM s_skip) AS upto
  FROM registry.decode_message(registry.changes_since((SELECT last_seq FROM s_skip), 100, false, NULL,
                                                      'regress', 0, NULL, ARRAY['x'])) m,
       jsonb_array_elements(m->'changes') c;
SELECT jsonb_array_length(m->'changes') AS n,
       (m->>'upto_seq')::bigint - (SELECT last_seq FROM s_skip) AS upto
  FROM registry.decode_message(registry.changes_since((SELECT last_seq FROM s_skip), 100, false, NULL,
                                                      NULL, 0, NULL, ARRAY['x', 'elsewhere'])) m;
SELECT registry.changes_since(0, 1, false, NULL, NULL, 0, NULL, ARRAY['bad name']);
SELECT registry.changes_since(0, 1, false, NULL, NULL, 0, NULL, ARRAY[['x'], ['elsewhere']]);
DROP TABLE skp;
