-- Canonical key text: one form per key value, whatever the session's
-- settings, for every primary-key type.

CREATE TYPE color AS ENUM ('red', 'green');
CREATE TABLE k_text (k text PRIMARY KEY);
CREATE TABLE k_int (k int PRIMARY KEY);
CREATE TABLE k_bigint (k bigint PRIMARY KEY);
CREATE TABLE k_uuid (k uuid PRIMARY KEY);
CREATE TABLE k_tstz (k timestamptz PRIMARY KEY);
CREATE TABLE k_ts (k timestamp PRIMARY KEY);
CREATE TABLE k_date (k date PRIMARY KEY);
CREATE TABLE k_num (k numeric PRIMARY KEY);
CREATE TABLE k_float (k float8 PRIMARY KEY);
CREATE TABLE k_bytea (k bytea PRIMARY KEY);
CREATE TABLE k_enum (k color PRIMARY KEY);
CREATE TABLE k_comp (ns text, svc varchar(40), port int, PRIMARY KEY (ns, svc, port));
SELECT count(*) FILTER (WHERE registry.replicate(c)) AS registered
  FROM unnest('{k_text,k_int,k_bigint,k_uuid,k_tstz,k_ts,k_date,k_num,k_float,k_bytea,k_enum,k_comp}'::regclass[]) c;

-- rows written under one set of session settings ...
SET TimeZone = 'Asia/Tokyo';
SET DateStyle = 'SQL, DMY';
SET extra_float_digits = -3;
SET IntervalStyle = 'sql_standard';
SET bytea_output = 'escape';
INSERT INTO k_text VALUES ('plain'), ('with space'), ('');
INSERT INTO k_int VALUES (-2147483648), (0), (42);
INSERT INTO k_bigint VALUES (9223372036854775807), (-1);
INSERT INTO k_uuid VALUES ('A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11');
INSERT INTO k_tstz VALUES ('2026-11-21 09:30:00.123456+09'), ('infinity'), ('0044-03-15 12:00:00+00 BC');
INSERT INTO k_ts VALUES ('2026-11-21 09:30:00'), ('-infinity');
INSERT INTO k_date VALUES ('21/11/2026');
INSERT INTO k_num VALUES (1.50), (-0.000), (1e20), ('NaN');
INSERT INTO k_float VALUES (0.1), (-0.0), (1e300), ('Infinity');
INSERT INTO k_bytea VALUES ('\x00ff'::bytea);
INSERT INTO k_enum VALUES ('green');
INSERT INTO k_comp VALUES ('default', 'orders', 8080), ('a,b', 'say "hi"', 1),
                          ('', 'back\slash', 2), ('(paren)', 'x y', 3);
RESET ALL;

-- ... have keys that do not depend on them
SELECT * FROM (
SELECT 'k_text' AS tbl, key FROM registry.versions('k_text')
UNION ALL SELECT 'k_int', key FROM registry.versions('k_int')
UNION ALL SELECT 'k_bigint', key FROM registry.versions('k_bigint')
UNION ALL SELECT 'k_uuid', key FROM registry.versions('k_uuid')
UNION ALL SELECT 'k_tstz', key FROM registry.versions('k_tstz')
UNION ALL SELECT 'k_ts', key FROM registry.versions('k_ts')
UNION ALL SELECT 'k_date', key FROM registry.versions('k_date')
UNION ALL SELECT 'k_num', key FROM registry.versions('k_num')
UNION ALL SELECT 'k_float', key FROM registry.versions('k_float')
UNION ALL SELECT 'k_bytea', key FROM registry.versions('k_bytea')
UNION ALL SELECT 'k_enum', key FROM registry.versions('k_enum')
UNION ALL SELECT 'k_comp', key FROM registry.versions('k_comp')) k
ORDER BY tbl, key COLLATE "C";

-- the same rows updated under other settings keep their keys
SET TimeZone = 'America/Los_Angeles';
SET DateStyle = 'German';
SET extra_float_digits = 3;
SET search_path = pg_temp, public;
UPDATE k_tstz SET k = k;
UPDATE k_date SET k = k;
UPDATE k_float SET k = k;
UPDATE k_num SET k = k;
RESET ALL;
SELECT key, count(*) FROM (
    SELECT key FROM registry.versions('k_tstz') UNION ALL
    SELECT key FROM registry.versions('k_date') UNION ALL
    SELECT key FROM registry.versions('k_float') UNION ALL
    SELECT key FROM registry.versions('k_num')) s
GROUP BY key ORDER BY key COLLATE "C";
-- nothing was deleted by the updates: a key update to the same value keeps the key
SELECT count(*) FROM registry.tombstones;

-- equal values are one key: 1.5 and 1.500 are the same numeric
INSERT INTO k_num VALUES (1.500);
SELECT key FROM registry.versions('k_num') WHERE key LIKE '1.5%';

-- keys that fit the limit (registry.max_key_length = 128 here) and one that does not
INSERT INTO k_text VALUES (repeat('x', 128));
INSERT INTO k_text VALUES (repeat('x', 129));
INSERT INTO k_comp VALUES (repeat('n', 60), repeat('s', 40), 1);
-- an update that makes the key too long is refused, the row is unchanged
UPDATE k_text SET k = repeat('y', 200) WHERE k = 'plain';
SELECT count(*) FROM k_text WHERE k = 'plain';

-- every composite key reads back: fetching the rows by key finds them all
SELECT r->>'key' AS key, r->>'state' AS state, r->'values' AS "values"
  FROM jsonb_array_elements(registry.decode_message(
         registry.fetch_rows('public.k_comp',
             ARRAY(SELECT key FROM registry.versions('k_comp')))) -> 'rows') r
 ORDER BY r->>'key' COLLATE "C";

-- the key hash takes the key columns one by one
SELECT registry.key_hash(VARIADIC ARRAY[1, 2]);

SELECT * FROM registry.verify();
DROP TABLE k_text, k_int, k_bigint, k_uuid, k_tstz, k_ts, k_date, k_num, k_float,
    k_bytea, k_enum, k_comp;
DROP TYPE color;
