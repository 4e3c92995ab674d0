-- What is captured, and when: only committed changes, once per key per
-- transaction; savepoint rollbacks and errors leave no trace.

CREATE TABLE cap (id int PRIMARY KEY, v text);
SELECT registry.replicate('cap');

CREATE FUNCTION cap_state() RETURNS TABLE (last_seq bigint, rows bigint,
                                           tombstones bigint, root text)
LANGUAGE sql AS $$
    SELECT n.last_seq, t.rows, t.tombstones, t.digest_root
      FROM registry.node n, registry.tables t WHERE t.table_name = 'public.cap'
$$;
CREATE TEMP TABLE before AS SELECT * FROM cap_state();

-- an aborted transaction leaves no trace
BEGIN;
INSERT INTO cap VALUES (1, 'a'), (2, 'b');
UPDATE cap SET v = 'c' WHERE id = 1;
ROLLBACK;
SELECT (SELECT row(b.*) FROM before b) = (SELECT row(s.*) FROM cap_state() s) AS unchanged;
SELECT count(*) FROM registry.versions('cap');
SELECT count(*) FROM registry.acceptors WHERE table_name = 'public.cap';

-- nor does a statement that fails half-way
INSERT INTO cap VALUES (1, 'a'), (1, 'duplicate');
SELECT (SELECT row(b.*) FROM before b) = (SELECT row(s.*) FROM cap_state() s) AS unchanged;

-- a savepoint rolled back drops its part only
BEGIN;
INSERT INTO cap VALUES (1, 'kept');
SAVEPOINT s1;
INSERT INTO cap VALUES (2, 'dropped');
UPDATE cap SET v = 'dropped too' WHERE id = 1;
ROLLBACK TO s1;
SAVEPOINT s2;
INSERT INTO cap VALUES (3, 'kept as well');
RELEASE s2;
COMMIT;
SELECT id, v FROM cap ORDER BY id;
SELECT key, op, origin FROM registry.change_log WHERE table_name = 'public.cap' ORDER BY seq;
SELECT * FROM registry.verify('cap');

-- a PL/pgSQL exception block is a subtransaction too
DO $$
BEGIN
    INSERT INTO cap VALUES (4, 'kept');
    BEGIN
        INSERT INTO cap VALUES (5, 'rolled back');
        PERFORM 1 / 0;
    EXCEPTION WHEN division_by_zero THEN
        NULL;
    END;
END
$$;
SELECT key, op FROM registry.change_log WHERE table_name = 'public.cap' ORDER BY seq;

-- several changes of one key in one transaction: one change, the last state
CREATE TEMP TABLE seq0 AS SELECT last_seq FROM registry.node;
BEGIN;
UPDATE cap SET v = 'x1' WHERE id = 1;
UPDATE cap SET v = 'x2' WHERE id = 1;
DELETE FROM cap WHERE id = 3;
INSERT INTO cap VALUES (3, 'back');
INSERT INTO cap VALUES (6, 'new');
DELETE FROM cap WHERE id = 6;
COMMIT;
SELECT l.seq - s.last_seq AS n, l.key, l.op
  FROM registry.change_log l, seq0 s
 WHERE l.seq > s.last_seq ORDER BY l.seq;
-- the change log carries each key's final version
SELECT count(*) AS mismatched FROM registry.change_log l
  JOIN registry.versions('cap') v USING (key)
 WHERE l.seq > (SELECT last_seq FROM seq0)
   AND l.version <> v.version;
-- and so does the row
SELECT count(*) AS mismatched FROM cap c JOIN registry.versions('cap') v
    ON v.key = c.id::text WHERE v.version <> c.registry_version;

-- versions of a key only grow
CREATE TEMP TABLE v1 AS SELECT registry_version AS v FROM cap WHERE id = 1;
UPDATE cap SET v = 'again' WHERE id = 1;
SELECT registry_version > (SELECT v FROM v1) AS grew FROM cap WHERE id = 1;

-- a key deleted and inserted again: the tombstone goes, the new version is larger
CREATE TEMP TABLE v4 AS SELECT registry_version AS v FROM cap WHERE id = 4;
DELETE FROM cap WHERE id = 4;
SELECT deleted, version > (SELECT v FROM v4) AS newer FROM registry.versions('cap') WHERE key = '4';
INSERT INTO cap VALUES (4, 'reborn');
SELECT deleted FROM registry.versions('cap') WHERE key = '4';
SELECT count(*) FROM registry.tombstones t JOIN registry.tables r USING (tid)
 WHERE r.table_name = 'public.cap' AND t.key = '4';

-- an update of the key is a delete of the old key and an insert of the new
UPDATE cap SET id = 40 WHERE id = 4;
SELECT key, op FROM registry.change_log WHERE table_name = 'public.cap'
 ORDER BY seq DESC LIMIT 2;
SELECT key, deleted FROM registry.versions('cap') WHERE key IN ('4', '40') ORDER BY key;
-- an update onto a key that exists is refused by the table's primary key
UPDATE cap SET id = 40 WHERE id = 1;
-- keys shifted within one statement
UPDATE cap SET id = id + 100 WHERE id IN (1, 2, 3);
UPDATE cap SET id = id - 100 WHERE id > 100;
SELECT id, v FROM cap ORDER BY id;
SELECT * FROM registry.verify('cap');

-- version columns belong to the registry: what users write there is replaced
UPDATE cap SET registry_version = 1, registry_origin = 'forged' WHERE id = 1;
SELECT registry_version > 1 AS restamped, registry_origin FROM cap WHERE id = 1;
INSERT INTO cap (id, v, registry_version, registry_origin) VALUES (7, 'x', 5, 'forged');
SELECT registry_version > 5 AS restamped, registry_origin FROM cap WHERE id = 7;

-- a user trigger that tampers with the version after the registry stamped it
CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.registry_version := 1; RETURN NEW; END $$;
CREATE TRIGGER zz_tamper BEFORE UPDATE ON cap FOR EACH ROW EXECUTE FUNCTION tamper();
UPDATE cap SET v = 'tampered' WHERE id = 7;
DROP TRIGGER zz_tamper ON cap;
-- a user trigger that cancels the update: nothing is captured
CREATE FUNCTION cancel() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NULL; END $$;
CREATE TRIGGER zz_cancel BEFORE UPDATE ON cap FOR EACH ROW EXECUTE FUNCTION cancel();
CREATE TEMP TABLE seq1 AS SELECT last_seq FROM registry.node;
UPDATE cap SET v = 'cancelled' WHERE id = 7;
SELECT last_seq = (SELECT last_seq FROM seq1) AS nothing_captured FROM registry.node;
DROP TRIGGER zz_cancel ON cap;

-- UPDATEs are recorded by registry_stamp, with no AFTER UPDATE trigger,
-- unless another BEFORE UPDATE trigger fires after it (triggers fire in
-- name order): then registry_capture fires for UPDATE too
CREATE FUNCTION capture_on_update() RETURNS boolean LANGUAGE sql AS $$
    SELECT (tgtype & 16) <> 0 FROM pg_trigger
     WHERE tgrelid = 'cap'::regclass AND tgname = 'registry_capture'
$$;
CREATE FUNCTION rekey() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN IF NEW.v = 'rekey' THEN NEW.id := NEW.id + 1000; END IF; RETURN NEW; END $$;
SELECT capture_on_update();
-- a trigger firing before registry_stamp: the stamp sees its key change
CREATE TRIGGER a_rekey BEFORE UPDATE ON cap FOR EACH ROW EXECUTE FUNCTION rekey();
SELECT capture_on_update();
UPDATE cap SET v = 'rekey' WHERE id = 7;
SELECT key, op FROM registry.change_log WHERE table_name = 'public.cap'
 ORDER BY seq DESC LIMIT 2;
-- renamed to fire after it: registry_capture records the update instead
ALTER TRIGGER a_rekey ON cap RENAME TO zz_rekey;
SELECT capture_on_update();
UPDATE cap SET v = 'rekey' WHERE id = 1007;
SELECT key, op FROM registry.change_log WHERE table_name = 'public.cap'
 ORDER BY seq DESC LIMIT 2;
SELECT id, v FROM cap WHERE id > 1000 ORDER BY id;
SELECT * FROM registry.verify('cap');
-- a disabled trigger does not count; enabled again, it does
ALTER TABLE cap DISABLE TRIGGER zz_rekey;
SELECT capture_on_update();
ALTER TABLE cap ENABLE TRIGGER zz_rekey;
SELECT capture_on_update();
DROP TRIGGER zz_rekey ON cap;
SELECT capture_on_update();
-- with the DDL check switched off the two can disagree: the UPDATE is
-- refused rather than left unrecorded, and any ALTER TABLE mends it
ALTER EVENT TRIGGER registry_ddl DISABLE;
CREATE TRIGGER zz_rekey BEFORE UPDATE ON cap FOR EACH ROW EXECUTE FUNCTION rekey();
ALTER EVENT TRIGGER registry_ddl ENABLE;
SELECT capture_on_update();
SELECT error_of($$UPDATE cap SET v = 'unrecorded' WHERE id = 2007$$);
SELECT v FROM cap WHERE id = 2007;
ALTER TABLE cap ENABLE ALWAYS TRIGGER registry_stamp;
SELECT capture_on_update();
UPDATE cap SET v = 'recorded' WHERE id = 2007;
SELECT key, op FROM registry.change_log WHERE table_name = 'public.cap'
 ORDER BY seq DESC LIMIT 1;
DROP TRIGGER zz_rekey ON cap;
SELECT capture_on_update();
SELECT * FROM registry.verify('cap');

-- INSERT ... ON CONFLICT DO UPDATE and MERGE update through the same
-- BEFORE trigger: one change per key, the op as the row saw it
INSERT INTO cap VALUES (7, 'upsert-new') ON CONFLICT (id) DO UPDATE SET v = 'x';
INSERT INTO cap VALUES (7, 'ignored') ON CONFLICT (id) DO UPDATE SET v = 'upserted';
INSERT INTO cap VALUES (7, 'ignored') ON CONFLICT (id) DO UPDATE SET v = 'skipped'
    WHERE cap.v = 'no such value';
SELECT v FROM cap WHERE id = 7;
SELECT key, op FROM registry.change_log WHERE table_name = 'public.cap'
 ORDER BY seq DESC LIMIT 2;
MERGE INTO cap c USING (VALUES (7, 'merged'), (8, 'merged-new')) s(id, v) ON c.id = s.id
  WHEN MATCHED THEN UPDATE SET v = s.v
  WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.v);
SELECT id, v FROM cap WHERE id IN (7, 8) ORDER BY id;
SELECT key, op FROM registry.change_log WHERE table_name = 'public.cap'
 ORDER BY seq DESC LIMIT 2;
DELETE FROM cap WHERE id = 8;
SELECT * FROM registry.verify('cap');

-- an UPDATE rewrites the version in the row: after nulls and a dropped
-- column too, and whatever else the statement changes
CREATE TABLE cap_wide (id int PRIMARY KEY, gone text, a text, b int, c text);
ALTER TABLE cap_wide DROP COLUMN gone;
SELECT registry.replicate('cap_wide');
INSERT INTO cap_wide VALUES (1, NULL, NULL, 'x'), (2, repeat('long', 1000), 5, NULL);
CREATE TEMP TABLE wide_before AS SELECT id, registry_version FROM cap_wide;
UPDATE cap_wide SET b = 7 WHERE id = 1;
UPDATE cap_wide SET c = 'y' WHERE id = 2;
UPDATE cap_wide SET a = NULL WHERE id = 2;
-- (the row's version is the one published: the acceptor's)
SELECT w.id, w.registry_version > b.registry_version AS newer,
       w.registry_version = a.version AS published, w.a IS NULL AS a_null, w.b, w.c
  FROM cap_wide w JOIN wide_before b USING (id)
  JOIN registry.acceptors a ON a.table_name = 'public.cap_wide' AND a.key = w.id::text
 ORDER BY w.id;
SELECT * FROM registry.verify('cap_wide');
DROP TABLE cap_wide;

-- TRUNCATE is replicated as the deletion of every row
CREATE TEMP TABLE live AS SELECT key FROM registry.versions('cap') WHERE NOT deleted;
TRUNCATE cap;
SELECT count(*) AS rows FROM cap;
SELECT count(*) AS now_deleted FROM registry.versions('cap') v JOIN live USING (key)
 WHERE v.deleted;
SELECT op, key FROM registry.change_log WHERE table_name = 'public.cap'
 ORDER BY seq DESC LIMIT 1;
SELECT rows, tombstones FROM registry.tables WHERE table_name = 'public.cap';
SELECT * FROM registry.verify('cap');
-- and rolls back like anything else
INSERT INTO cap VALUES (1, 'one');
BEGIN;
TRUNCATE cap;
ROLLBACK;
SELECT id, v FROM cap;
SELECT * FROM registry.verify('cap');

-- two-phase commit would publish changes nobody sees commit: refused
BEGIN;
INSERT INTO cap VALUES (8, 'prepared');
PREPARE TRANSACTION 'p1';
SELECT count(*) FROM pg_prepared_xacts;
SELECT count(*) FROM cap WHERE id = 8;
-- a prepared transaction without registry changes is fine
BEGIN;
CREATE TABLE unrelated (a int);
PREPARE TRANSACTION 'p2';
COMMIT PREPARED 'p2';
DROP TABLE unrelated;

-- a resync() that fails in a savepoint leaves capture on for the table
CREATE TABLE cap_ref (id int REFERENCES cap ON DELETE RESTRICT);
INSERT INTO cap VALUES (9, 'referenced');
INSERT INTO cap_ref VALUES (9);
BEGIN;
SAVEPOINT s;
SELECT registry.resync('cap');
ROLLBACK TO SAVEPOINT s;
INSERT INTO cap VALUES (10, 'after the failed resync');
SELECT registry_version IS NOT NULL AS stamped, registry_origin FROM cap WHERE id = 10;
COMMIT;
SELECT op, key FROM registry.change_log WHERE table_name = 'public.cap'
 ORDER BY seq DESC LIMIT 1;
DROP TABLE cap_ref;

-- registry.row_keys lists each row once, under its key's hash (inserts,
-- deletes, key changes, TRUNCATE and rollbacks above); verify() checks it
SELECT count(*) AS listed, (SELECT count(*) FROM cap) AS rows
  FROM registry.row_keys k JOIN registry.tables r USING (tid)
 WHERE r.table_name = 'public.cap';
BEGIN;
DELETE FROM registry.row_keys k USING registry.tables r
 WHERE r.tid = k.tid AND r.table_name = 'public.cap' AND k.key = '10';
INSERT INTO registry.row_keys
  SELECT tid, registry.key_hash(999), '999' FROM registry.tables WHERE table_name = 'public.cap';
INSERT INTO registry.row_keys
  SELECT tid, registry.key_hash(9) # 1, '9' FROM registry.tables WHERE table_name = 'public.cap';
SELECT problem, key, detail FROM registry.verify('cap') ORDER BY problem, key;
ROLLBACK;

SELECT * FROM registry.verify();
DROP FUNCTION cap_state(), tamper(), cancel(), capture_on_update(), rekey();
DROP TABLE cap;

-- an UPDATE that changes nothing keeps the row's version: no change log
-- entry, nothing for peers (a new version for old content would win over
-- a newer change made on another node meanwhile)
CREATE TABLE noop (id int PRIMARY KEY, v text, n int);
SELECT registry.replicate('noop');
INSERT INTO noop VALUES (1, 'same', 10), (2, 'other', 20);
CREATE TEMP TABLE noop0 AS
    SELECT (SELECT last_seq FROM registry.node) AS seq,
           (SELECT registry_version FROM noop WHERE id = 1) AS v1,
           (SELECT registry_version FROM noop WHERE id = 2) AS v2;
UPDATE noop SET v = 'same' WHERE id = 1;
UPDATE noop SET n = n WHERE id = 1;
UPDATE noop SET v = v, n = n;
SELECT (SELECT last_seq FROM registry.node) = seq AS no_new_changes,
       (SELECT registry_version FROM noop WHERE id = 1) = v1 AS version_kept
  FROM noop0;
-- a real change still takes a new version, the unchanged row keeps its own
UPDATE noop SET n = n + (id - 1);
SELECT id, registry_version = (CASE id WHEN 1 THEN v1 ELSE v2 END) AS version_kept
  FROM noop, noop0 ORDER BY id;
SELECT count(*) AS one_change FROM registry.change_log l, noop0
 WHERE l.table_name = 'public.noop' AND l.seq > noop0.seq;
SELECT * FROM registry.verify('noop');
DROP TABLE noop, noop0;


-- changes of a key before and after a resync of its table in one
-- transaction: the resync zeroes the table's digests where it stands, so
-- the insert after it must not be folded into the update before it (the
-- digests would then leave out the row the table holds)
CREATE TABLE rs (id int PRIMARY KEY, v text);
SELECT registry.replicate('rs');
INSERT INTO rs VALUES (1, 'a'), (2, 'b');
BEGIN;
UPDATE rs SET v = 'a2' WHERE id = 1;
SELECT registry.resync('rs');
INSERT INTO rs VALUES (1, 'a3');
COMMIT;
SELECT id, v FROM rs ORDER BY id;
SELECT rows, tombstones FROM registry.tables WHERE table_name = 'public.rs';
SELECT * FROM registry.verify('rs');
DROP TABLE rs;

-- An INSERT looks for a tombstone to take only where the key's digest
-- bucket may hold one (digest.c counts them); every tombstone, however
-- written, must be counted, or an insert of its key would leave it beside
-- the new row.  Each step ends with the tombstones expected and a clean
-- verify().
CREATE TABLE tf (id int PRIMARY KEY);
SELECT registry.replicate('tf');
CREATE FUNCTION tf_tombs() RETURNS TABLE (tombstones bigint, verify bigint)
LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM registry.tombstones t
              JOIN registry.tables r USING (tid) WHERE r.table_name = 'public.tf'),
           (SELECT count(*) FROM registry.verify('tf'))
$$;
INSERT INTO tf SELECT g FROM generate_series(1, 200) g;
-- local deletes, then inserts of the same keys
DELETE FROM tf WHERE id <= 100;
SELECT * FROM tf_tombs();
INSERT INTO tf SELECT g FROM generate_series(1, 100) g;
SELECT * FROM tf_tombs();
-- deletes rolled back stay counted (harmless), and take nothing
BEGIN;
DELETE FROM tf WHERE id > 150;
ROLLBACK;
INSERT INTO tf SELECT g FROM generate_series(201, 300) g;
SELECT * FROM tf_tombs();
-- deleted and inserted again in one transaction, then across two
BEGIN;
DELETE FROM tf WHERE id <= 10;
INSERT INTO tf SELECT g FROM generate_series(1, 10) g;
COMMIT;
DELETE FROM tf WHERE id <= 10;
INSERT INTO tf SELECT g FROM generate_series(1, 10) g;
SELECT * FROM tf_tombs();
-- a key-changing UPDATE leaves the old key's tombstone
UPDATE tf SET id = 1000 WHERE id = 1;
INSERT INTO tf VALUES (1);
SELECT * FROM tf_tombs();
-- a remote delete of a key never seen here
SELECT registry.apply_row('tf', '5000', registry.hlc_now(), 'n2', true);
INSERT INTO tf VALUES (5000);
SELECT * FROM tf_tombs();
-- TRUNCATE writes a tombstone for every row
TRUNCATE tf;
SELECT * FROM tf_tombs();
INSERT INTO tf SELECT g FROM generate_series(1, 300) g;
SELECT * FROM tf_tombs();
-- all deleted again, then inserted again
DELETE FROM tf WHERE id <= 300;
SELECT * FROM tf_tombs();
INSERT INTO tf SELECT g FROM generate_series(1, 300) g;
SELECT * FROM tf_tombs();
-- purged tombstones are uncounted, the others stay counted
DELETE FROM tf WHERE id <= 300;
UPDATE registry.tombstones SET written_at = written_at - interval '30 days'
 WHERE tid = (SELECT tid FROM registry.tables WHERE table_name = 'public.tf')
   AND key::int <= 150;
SELECT registry.purge_tombstones() AS purged;
SELECT * FROM tf_tombs();
INSERT INTO tf SELECT g FROM generate_series(1, 300) g;
SELECT * FROM tf_tombs();
DROP TABLE tf;
DROP FUNCTION tf_tombs();
