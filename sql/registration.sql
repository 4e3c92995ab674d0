-- Registering tables: what is accepted, what is refused and why.

CREATE TABLE services (name text, zone text, endpoints jsonb,
                       PRIMARY KEY (name, zone));
SELECT registry.replicate('services');
-- idempotent
SELECT registry.replicate('services');

-- what registration added to the table
\d services
SELECT table_name, tid > 0 AS has_id, key_columns, key_types, rows, tombstones
  FROM registry.tables;

-- refused: no primary key
CREATE TABLE nokey (a int, b text);
SELECT registry.replicate('nokey');
-- refused: a unique index is not a primary key
CREATE TABLE uniqonly (a int UNIQUE NOT NULL);
SELECT registry.replicate('uniqonly');
-- refused: temporary and unlogged tables
CREATE TEMP TABLE tmp (a int PRIMARY KEY);
SELECT registry.replicate('tmp');
CREATE UNLOGGED TABLE unl (a int PRIMARY KEY);
SELECT registry.replicate('unl');
-- refused: not tables
CREATE VIEW v AS SELECT 1 AS a;
SELECT registry.replicate('v');
CREATE MATERIALIZED VIEW mv AS SELECT 1 AS a;
SELECT registry.replicate('mv');
CREATE SEQUENCE seq;
SELECT registry.replicate('seq');
-- refused: partitioned tables and their partitions
CREATE TABLE parted (a int PRIMARY KEY, b text) PARTITION BY RANGE (a);
CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
SELECT registry.replicate('parted');
SELECT registry.replicate('parted_1');
-- ... nor can a registry table become a partition
CREATE TABLE parted_2 (a int PRIMARY KEY, b text);
SELECT registry.replicate('parted_2');
ALTER TABLE parted ATTACH PARTITION parted_2 FOR VALUES FROM (100) TO (200);
-- refused: deferrable primary key
CREATE TABLE deferred (a int PRIMARY KEY DEFERRABLE);
SELECT registry.replicate('deferred');
-- refused: key types whose equal values can be written differently
CREATE TABLE ivl (a interval PRIMARY KEY);
SELECT registry.replicate('ivl');
CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE cikey (a text COLLATE ci PRIMARY KEY);
SELECT registry.replicate('cikey');
-- refused: a column name the registry needs
CREATE TABLE clash (a int PRIMARY KEY, registry_version int);
SELECT registry.replicate('clash');
-- refused: the extension's own tables and catalogs
SELECT registry.replicate('registry.tombstones');
SELECT registry.replicate('pg_class');
-- nothing was registered by the failed attempts
SELECT table_name FROM registry.tables ORDER BY 1;

-- a table with rows: each row becomes a versioned insert
CREATE TABLE preloaded (id int PRIMARY KEY, v text);
INSERT INTO preloaded SELECT g, 'v' || g FROM generate_series(1, 5) g;
SELECT registry.replicate('preloaded');
SELECT count(*) AS rows, count(DISTINCT registry_version) AS distinct_versions,
       bool_and(registry_origin = 'regress') AS all_local
  FROM preloaded;
SELECT rows, tombstones FROM registry.tables WHERE table_name = 'public.preloaded';
-- published as one "resync" change, not one per row
SELECT op, key FROM registry.change_log WHERE table_name = 'public.preloaded';
SELECT * FROM registry.verify('preloaded');

-- DDL that would break replication is refused
ALTER TABLE services DROP COLUMN registry_version;
ALTER TABLE services ALTER COLUMN registry_origin TYPE varchar;
ALTER TABLE services DISABLE TRIGGER registry_capture;
ALTER TABLE services DISABLE TRIGGER ALL;
DROP TRIGGER registry_stamp ON services;
ALTER TABLE services SET UNLOGGED;
ALTER TABLE services DROP CONSTRAINT services_pkey;
ALTER TABLE services ALTER COLUMN zone TYPE varchar(10);
-- harmless DDL is allowed
ALTER TABLE services ADD COLUMN weight int DEFAULT 1;
ALTER TABLE services RENAME TO svc;
SELECT table_name FROM registry.tables WHERE tid = (SELECT tid FROM registry.tables WHERE relid = 'svc'::regclass);
ALTER TABLE svc RENAME TO services;
-- a key column's length may change: the keys' text stays the same, and
-- so do their entries in registry.row_keys
CREATE TABLE widen (code varchar(4) PRIMARY KEY, v int);
SELECT registry.replicate('widen');
INSERT INTO widen VALUES ('ab', 1);
ALTER TABLE widen ALTER COLUMN code TYPE varchar(8);
INSERT INTO widen VALUES ('abcdefg', 2);
UPDATE widen SET v = 3 WHERE code = 'ab';
SELECT jsonb_array_length(registry.decode_message(
         registry.bucket_entries('public.widen', 1, '{0}'))->'entries') AS listed;
SELECT key, deleted FROM registry.versions('widen') ORDER BY key;
SELECT * FROM registry.verify('widen');
SELECT k.key, k.khash = registry.key_hash(k.key::varchar) AS hash_ok
  FROM registry.row_keys k JOIN registry.replicated_tables r USING (tid)
 WHERE r.relid = 'widen'::regclass ORDER BY k.key;
CREATE TEMP TABLE widen_tid AS
  SELECT tid FROM registry.replicated_tables WHERE relid = 'widen'::regclass;
SELECT registry.unreplicate('widen');
-- registration adds no index to the table, and its keys are forgotten
SELECT count(*) AS indexes FROM pg_index WHERE indrelid = 'widen'::regclass;
SELECT count(*) AS leftover_keys FROM registry.row_keys WHERE tid = (SELECT tid FROM widen_tid);
DROP TABLE widen, widen_tid;
-- new columns are replicated like the others
INSERT INTO services (name, zone, endpoints) VALUES ('a', 'z1', '[]');
SELECT name, zone, weight FROM services;

-- session_replication_role does not switch capture off
SET session_replication_role = replica;
INSERT INTO services (name, zone) VALUES ('b', 'z1');
RESET session_replication_role;
SELECT key FROM registry.versions('services') ORDER BY key;

-- unregistering restores the table and forgets its versions
DELETE FROM services WHERE name = 'b';
SELECT registry.unreplicate('services');
SELECT registry.unreplicate('services');
\d services
SELECT count(*) FROM registry.tombstones;
SELECT table_name FROM registry.tables ORDER BY 1;
-- and registering again starts afresh
SELECT registry.replicate('services');
SELECT key, deleted FROM registry.versions('services') ORDER BY key;

-- dropping a registered table unregisters it
CREATE TABLE doomed (id int PRIMARY KEY);
SELECT registry.replicate('doomed');
INSERT INTO doomed VALUES (1);
DELETE FROM doomed;
DROP TABLE doomed;
SELECT table_name FROM registry.tables ORDER BY 1;
SELECT count(*) FROM registry.tombstones t
 WHERE NOT EXISTS (SELECT 1 FROM registry.replicated_tables r WHERE r.tid = t.tid);

DROP TABLE nokey, uniqonly, tmp, unl, parted, parted_2, deferred, ivl, cikey, clash;
DROP VIEW v;
DROP MATERIALIZED VIEW mv;
DROP SEQUENCE seq;

-- a registration a restore loaded carries another instance's incarnation:
-- until its table is whole again, writes are refused; the DDL that makes
-- it whole takes it up, versions and tombstones kept (t/021 restores a
-- real dump)
CREATE TABLE rest (id int PRIMARY KEY, v text);
SELECT registry.replicate('rest');
INSERT INTO rest VALUES (1, 'a'), (2, 'b');
DELETE FROM rest WHERE id = 2;
CREATE TABLE rest_before AS SELECT * FROM registry.versions('rest');
SELECT incarnation ~ '^[0-9]+\.[0-9]+$' AS looks_right
  FROM registry.replicated_tables WHERE relid = 'rest'::regclass;
UPDATE registry.replicated_tables SET incarnation = '1.1' WHERE relid = 'rest'::regclass;
\c
INSERT INTO rest VALUES (3, 'c');
ALTER TABLE rest ENABLE ALWAYS TRIGGER registry_stamp;
INSERT INTO rest VALUES (3, 'c');
SELECT b.key, b.version = v.version AS same_version, v.deleted
  FROM rest_before b JOIN registry.versions('rest') v USING (key) ORDER BY 1;
SELECT rows, tombstones FROM registry.tables WHERE table_name = 'public.rest';
SELECT * FROM registry.verify('rest');
SELECT registry.unreplicate('rest');
DROP TABLE rest, rest_before;
