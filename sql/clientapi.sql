-- Client APIs (issue 15): registry.list(), CALL registry.watch(),
-- registry.wait_for_peers().  One node; seqs are shown relative to the
-- listing's position (other tests wrote before), versions not at all.

CREATE TABLE cl_svc (k text PRIMARY KEY, v text);
CREATE TABLE cl_cfg (id int PRIMARY KEY, body jsonb);
CREATE TABLE cl_secret (k text PRIMARY KEY, v text);
CREATE TABLE cl_rls (k text PRIMARY KEY, v text);
CREATE TABLE cl_plain (k text PRIMARY KEY);
SELECT registry.replicate('cl_svc'), registry.replicate('cl_cfg'),
       registry.replicate('cl_secret'), registry.replicate('cl_rls');
INSERT INTO cl_svc VALUES ('web/1', 'a'), ('web/2', 'b'), ('db/1', 'c');
INSERT INTO cl_cfg VALUES (1, '{"x": 1}');
ALTER TABLE cl_rls ENABLE ROW LEVEL SECURITY;
CREATE POLICY cl_rls_p ON cl_rls USING (k LIKE 'pub%');
CREATE ROLE cl_reader;
GRANT SELECT ON cl_svc, cl_cfg, cl_rls TO cl_reader;

-- ---- list ----
-- the position row comes first, then the rows; every row has the position
CREATE TEMP TABLE pos AS
    SELECT epoch, seq FROM registry.list(ARRAY['cl_svc'::regclass]) LIMIT 1;
SELECT seq = (SELECT n.last_seq FROM registry.node n) AS position_is_last_seq,
       epoch = (SELECT n.epoch FROM registry.node n) AS same_epoch
  FROM pos;
SELECT table_name, key, origin, "row" ->> 'v' AS v,
       version = (SELECT registry_version FROM cl_svc s WHERE s.k = l.key) AS version_ok,
       (l.epoch, l.seq) = (SELECT epoch, seq FROM pos) AS same_position
  FROM registry.list(ARRAY['cl_svc'::regclass]) l ORDER BY table_name NULLS FIRST, key;
-- a key prefix (of the canonical key text), and several tables
SELECT table_name, key FROM registry.list(ARRAY['cl_svc', 'cl_cfg']::regclass[], 'web/')
 ORDER BY table_name NULLS FIRST, key;
SELECT table_name, key, "row" -> 'body' AS body FROM registry.list(ARRAY['cl_cfg'::regclass]);
-- an empty listing still has its position
SELECT count(*), count(seq) FROM registry.list(ARRAY['cl_svc'::regclass], 'nothing');
-- not a registry table; NULL in the list
SELECT error_of($$SELECT * FROM registry.list(ARRAY['cl_plain'::regclass])$$);
SELECT error_of($$SELECT * FROM registry.list(ARRAY[NULL::regclass])$$);

-- ---- watch ----
UPDATE cl_svc SET v = 'a2' WHERE k = 'web/1';
DELETE FROM cl_svc WHERE k = 'db/1';
INSERT INTO cl_cfg VALUES (2, '{"y": 2}');
-- procedure calls: the position from the temp table
SELECT epoch AS ep, seq AS sq FROM pos \gset
CREATE TEMP TABLE w AS SELECT NULL::bigint AS epoch, NULL::bigint AS seq, NULL::jsonb AS changes;
CREATE PROCEDURE watch_into(ep bigint, sq bigint, tbls regclass[] DEFAULT NULL,
                            prefix text DEFAULT NULL, maxc int DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE e bigint := ep; s bigint := sq; c jsonb;
BEGIN
    CALL registry.watch(e, s, c, tbls, prefix, maxc, '0');
    DELETE FROM w;
    INSERT INTO w VALUES (e, s, c);
END $$;
CALL watch_into(:ep, :sq, ARRAY['cl_svc'::regclass]);
SELECT epoch = :ep AS same_epoch, seq - :sq AS advanced FROM w;
SELECT x ->> 'seq' IS NOT NULL AS has_seq, x ->> 'table' AS tbl, x ->> 'key' AS key,
       x ->> 'op' AS op, x ->> 'origin' AS origin, x -> 'reason' AS reason,
       x -> 'row' ->> 'v' AS row_v, x -> 'row' IS NULL OR x -> 'row' = 'null' AS no_row
  FROM w, jsonb_array_elements(changes) x;
-- in seq order, each seq after the position
SELECT bool_and((x ->> 'seq')::bigint > :sq) AS after_position,
       array_agg((x ->> 'seq')::bigint ORDER BY ord) =
       array_agg((x ->> 'seq')::bigint ORDER BY (x ->> 'seq')::bigint) AS in_order
  FROM w, jsonb_array_elements(changes) WITH ORDINALITY AS a(x, ord);
-- all tables: cl_cfg's insert too; with max_changes 1 only the first,
-- and the position moves to it
CALL watch_into(:ep, :sq);
SELECT jsonb_array_length(changes) AS n,
       (SELECT string_agg(x ->> 'table' || ':' || (x ->> 'op'), ' ') FROM jsonb_array_elements(changes) x) AS ops
  FROM w;
CALL watch_into(:ep, :sq, maxc => 1);
SELECT jsonb_array_length(changes) AS n, seq = (changes -> 0 ->> 'seq')::bigint AS position_is_its_seq FROM w;
-- a key prefix
CALL watch_into(:ep, :sq, prefix => 'db/');
SELECT x ->> 'key' AS key, x ->> 'op' AS op FROM w, jsonb_array_elements(changes) x;
-- nothing after the last seq: empty, and the position is the last seq
SELECT last_seq AS last FROM registry.node \gset
CALL watch_into(:ep, :last);
SELECT changes, seq = :last AS stays FROM w;
-- a prefix that matches nothing moves the position over what was looked at
CALL watch_into(:ep, :sq, prefix => 'zzz');
SELECT changes, seq = :last AS moved_to_last FROM w;

-- positions that cannot be served: RG001, the detail says why
CREATE FUNCTION detail_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE d text;
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS d = PG_EXCEPTION_DETAIL;
    RETURN SQLSTATE || ': ' || regexp_replace(d, '[0-9]+', 'N', 'g');
END $$;
SELECT error_of(format('CALL registry.watch(%s, %s, NULL, timeout => %L)', :ep + 1, :sq, '0'));
SELECT detail_of(format('CALL registry.watch(%s, %s, NULL, timeout => %L)', :ep + 1, :sq, '0'));
SELECT detail_of(format('CALL registry.watch(%s, %s, NULL, timeout => %L)', :ep, :last + 100, '0'));
-- the ring holds 64 entries (regress.conf): 70 changes later :sq is gone
INSERT INTO cl_cfg SELECT g, '{}' FROM generate_series(100, 169) g;
SELECT detail_of(format('CALL registry.watch(%s, %s, NULL, timeout => %L)', :ep, :sq, '0'));
-- registry.list() gives a position that can be watched from again
SELECT epoch AS ep2, seq AS sq2 FROM registry.list(ARRAY['cl_cfg'::regclass]) LIMIT 1 \gset
CALL watch_into(:ep2, :sq2);
SELECT changes, seq = :sq2 AS same FROM w;
-- bad arguments
SELECT error_of(format('CALL registry.watch(%s, -1, NULL)', :ep));
SELECT error_of(format('CALL registry.watch(%s, %s, NULL, max_changes => 0)', :ep, :last));
SELECT error_of(format('CALL registry.watch(%s, %s, NULL, timeout => %L)', :ep, :last, '2 hours'));
SELECT error_of(format('CALL registry.watch(NULL, %s, NULL)', :last));

-- a TRUNCATE is one resync change: a key prefix does not filter it out
SELECT last_seq AS last2 FROM registry.node \gset
CREATE TABLE cl_tr (k text PRIMARY KEY);
SELECT registry.replicate('cl_tr');
INSERT INTO cl_tr VALUES ('app/1'), ('app/2');
SELECT last_seq AS last3 FROM registry.node \gset
TRUNCATE cl_tr;
CALL watch_into(:ep, :last3, ARRAY['cl_tr'::regclass], 'app/');
SELECT x ->> 'op' AS op, x -> 'key' AS key, x -> 'row' AS row FROM w, jsonb_array_elements(changes) x;
-- a table named, unregistered and registered again, is followed on
SELECT last_seq AS last4 FROM registry.node \gset
SELECT registry.unreplicate('cl_tr'), registry.replicate('cl_tr');
INSERT INTO cl_tr VALUES ('app/3');
CALL watch_into(:ep, :last4, ARRAY['cl_tr'::regclass]);
SELECT x ->> 'op' AS op, x ->> 'key' AS key FROM w, jsonb_array_elements(changes) x;
DROP TABLE cl_tr;

-- rows are shown from the columns' output functions, never through a
-- cast to json that a type's owner wrote (it would run as the caller)
CREATE TYPE cl_mood AS ENUM ('calm', 'happy');
CREATE FUNCTION cl_mood_json(cl_mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'the cast to json ran as %', current_user;
    RETURN '"cast"';
END $$;
CREATE CAST (cl_mood AS json) WITH FUNCTION cl_mood_json(cl_mood);
CREATE TABLE cl_types (k int PRIMARY KEY, m cl_mood, b bool, f float8, n numeric,
                       j jsonb, a int[], t timestamptz);
SELECT registry.replicate('cl_types');
SELECT last_seq AS last5 FROM registry.node \gset
INSERT INTO cl_types VALUES (1, 'happy', true, 'NaN', 1.50, '{"x": [1]}', '{1,2}',
                             '2026-01-02 03:04:05+00'),
                            (2, NULL, false, 2.5, 'Infinity', 'null', NULL, NULL);
SELECT key, "row" - 'registry_version' AS row FROM registry.list(ARRAY['cl_types'::regclass]) WHERE key IS NOT NULL ORDER BY key;
CALL watch_into(:ep, :last5, ARRAY['cl_types'::regclass]);
SELECT x ->> 'key' AS key, (x -> 'row') - 'registry_version' AS row FROM w, jsonb_array_elements(changes) x;
DROP TABLE cl_types;
DROP CAST (cl_mood AS json);
DROP FUNCTION cl_mood_json(cl_mood);
DROP TYPE cl_mood;

-- not in a transaction with its own uncommitted changes
BEGIN;
INSERT INTO cl_svc VALUES ('phantom', 'x');
SELECT error_of($$SELECT count(*) FROM registry.list(ARRAY['cl_svc'::regclass])$$);
ROLLBACK;

-- ---- privileges ----
SET ROLE cl_reader;
SELECT count(*) > 0 AS reader_lists FROM registry.list(ARRAY['cl_svc'::regclass]);
SELECT error_of($$SELECT * FROM registry.list(ARRAY['cl_secret'::regclass])$$);
SELECT error_of($$SELECT * FROM registry.list(ARRAY['cl_rls'::regclass])$$);
SELECT error_of(format('CALL registry.watch(%s, %s, NULL, ARRAY[%L::regclass], timeout => %L)', :ep, :last, 'cl_secret', '0'));
SELECT error_of(format('CALL registry.watch(%s, %s, NULL, ARRAY[%L::regclass], timeout => %L)', :ep, :last, 'cl_rls', '0'));
-- all tables: only those it may read in full (cl_svc, cl_cfg), no error
SELECT DISTINCT table_name FROM registry.list() WHERE table_name LIKE 'public.cl_%' ORDER BY 1;
RESET ROLE;
-- the owner is not subject to its own table's row security (no FORCE)
SELECT count(*) FROM registry.list(ARRAY['cl_rls'::regclass]);

-- ---- wait_for_peers ----
-- no peers: nothing to wait for, whatever this session wrote
SELECT registry.wait_for_peers();
SELECT registry.wait_for_peers(0, '0');
SELECT error_of($$SELECT registry.wait_for_peers(1)$$);
SELECT error_of($$SELECT registry.wait_for_peers(-1)$$);
SELECT error_of($$SELECT registry.wait_for_peers(NULL, NULL)$$);
-- not for changes of the same transaction: they are not committed yet
BEGIN;
INSERT INTO cl_svc VALUES ('tx/1', 'x');
SELECT error_of($$SELECT registry.wait_for_peers()$$);
ROLLBACK;

DROP PROCEDURE watch_into;
DROP FUNCTION detail_of(text);
DROP OWNED BY cl_reader;
DROP ROLE cl_reader;
