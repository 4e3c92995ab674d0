-- Writing rows with a remote version and origin: last writer wins,
-- tombstones win over older writes, the clock's receive rule applies.

CREATE TABLE app (name text, zone int, info text NOT NULL DEFAULT '',
                  PRIMARY KEY (name, zone));
SELECT registry.replicate('app');
CREATE TEMP TABLE base AS SELECT registry.hlc_now() AS v;
CREATE FUNCTION v(n int) RETURNS bigint LANGUAGE sql AS $$
    SELECT (SELECT v FROM base) + n
$$;

-- a new key from node n2
SELECT registry.apply_row('app', '(a,1)', v(10), 'n2', false, '{"name": "a", "zone": 1, "info": "from n2"}');
SELECT name, zone, info, registry_version = v(10) AS remote_version, registry_origin FROM app;
-- an older version of it is skipped, an equal one too
SELECT registry.apply_row('app', '(a,1)', v(5), 'n3', false, '{"name": "a", "zone": 1, "info": "older"}');
SELECT registry.apply_row('app', '(a,1)', v(10), 'n2', false, '{"name": "a", "zone": 1, "info": "same"}');
-- the same version from a node with a greater name wins the tie
SELECT registry.apply_row('app', '(a,1)', v(10), 'n3', false, '{"name": "a", "zone": 1, "info": "tie to n3"}');
SELECT registry.apply_row('app', '(a,1)', v(10), 'n1', false, '{"name": "a", "zone": 1, "info": "tie lost"}');
SELECT info, registry_origin FROM app;
-- a newer version updates the row
SELECT registry.apply_row('app', '(a,1)', v(20), 'n2', false, '{"name": "a", "zone": 1, "info": "newer"}');
SELECT info, registry_origin FROM app;

-- a remote delete writes a tombstone; older writes cannot bring the row back
SELECT registry.apply_row('app', '(a,1)', v(30), 'n3', true);
SELECT count(*) FROM app;
SELECT key, deleted, origin, version = v(30) AS remote_version FROM registry.versions('app');
SELECT registry.apply_row('app', '(a,1)', v(25), 'n2', false, '{"name": "a", "zone": 1, "info": "zombie"}');
SELECT count(*) FROM app;
-- a newer insert does
SELECT registry.apply_row('app', '(a,1)', v(40), 'n2', false, '{"name": "a", "zone": 1, "info": "back"}');
SELECT info FROM app;
SELECT key, deleted FROM registry.versions('app');

-- a tombstone for a key this node never had
SELECT registry.apply_row('app', '(ghost,9)', v(50), 'n2', true);
SELECT key, deleted, origin FROM registry.versions('app') ORDER BY key;
SELECT registry.apply_row('app', '(ghost,9)', v(45), 'n3', false, '{"name": "ghost", "zone": 9, "info": ""}');
SELECT count(*) FROM app WHERE name = 'ghost';

-- local writes always go above what was received
UPDATE app SET info = 'local' WHERE name = 'a';
SELECT registry_version > v(50) AS above_received, registry_origin FROM app WHERE name = 'a';
-- a remote version just below the local one loses, just above wins
CREATE TEMP TABLE loc AS SELECT registry_version AS v FROM app WHERE name = 'a';
SELECT registry.apply_row('app', '(a,1)', (SELECT v - 1 FROM loc), 'n2', false, '{"name": "a", "zone": 1, "info": "late"}');
SELECT info FROM app WHERE name = 'a';
SELECT registry.apply_row('app', '(a,1)', (SELECT v + 1 FROM loc), 'n2', false, '{"name": "a", "zone": 1, "info": "later"}');
SELECT info, registry_origin FROM app WHERE name = 'a';

-- applied changes are captured with their origin, like local ones
SELECT key, op, origin FROM registry.change_log WHERE table_name = 'public.app' ORDER BY seq;
SELECT key, origin, op, jsonb_array_length(history) AS ops
  FROM registry.acceptors WHERE table_name = 'public.app' ORDER BY key;

-- versions too far in the future (registry.max_clock_skew) are refused
SELECT error_of($$SELECT registry.apply_row('app', '(far,1)', registry.hlc_now() + (7200000::bigint << 16),
                          'n2', false, '{"name": "far", "zone": 1, "info": ""}')$$);
SELECT count(*) FROM app WHERE name = 'far';

-- bad input is refused and leaves nothing behind
SELECT registry.apply_row('app', '(b,1)', v(70), 'n2', false, '{"name": "other", "zone": 1, "info": ""}');
\set VERBOSITY terse
SELECT registry.apply_row('app', '(b,1)', v(70), 'n2', false, '{"name": "b", "zone": 1, "info": null}');
\set VERBOSITY default
SELECT registry.apply_row('app', '(b,1)', v(70), 'n2', false, NULL);
SELECT registry.apply_row('app', '(b,1)', v(70), 'n2', false, '[1, 2]');
SELECT registry.apply_row('app', '(b,1)', v(70), 'bad origin!', false, '{"name": "b", "zone": 1}');
SELECT registry.apply_row('app', '(b,1)', v(70), 'n2', false, '{"name": "b", "zone": "x"}');
SELECT registry.apply_row('app', '(b,1', v(70), 'n2', true);
SELECT registry.apply_row('app', '(b,1)', -1, 'n2', true);
SELECT count(*) FROM app WHERE name = 'b';
SELECT * FROM registry.verify('app');

-- several rows in one transaction, rolled back: no trace
CREATE TEMP TABLE l0 AS SELECT last_seq FROM registry.node;
BEGIN;
SELECT registry.apply_row('app', '(t1,1)', v(80), 'n2', false, '{"name": "t1", "zone": 1, "info": ""}');
SELECT registry.apply_row('app', '(t2,1)', v(81), 'n2', false, '{"name": "t2", "zone": 1, "info": ""}');
ROLLBACK;
SELECT count(*) FROM app WHERE name LIKE 't_';
SELECT last_seq = (SELECT last_seq FROM l0) AS nothing_published FROM registry.node;

-- user triggers do not fire for applied rows (as with logical replication)
CREATE TABLE audit (what text);
CREATE FUNCTION audit_it() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit VALUES (TG_OP); RETURN NEW; END $$;
CREATE TRIGGER audit AFTER INSERT OR UPDATE ON app FOR EACH ROW EXECUTE FUNCTION audit_it();
SELECT registry.apply_row('app', '(u,1)', v(90), 'n2', false, '{"name": "u", "zone": 1, "info": ""}');
INSERT INTO app VALUES ('local', 1);
SELECT what FROM audit;

-- arguments that must be given are checked, not dereferenced
SELECT registry.apply_row(NULL, '(a,1)', v(95), 'n2', true);
SELECT registry.apply_row('app', NULL, v(95), 'n2', true);
SELECT registry.apply_row('app', '(a,1)', NULL, 'n2', true);
SELECT registry.apply_row('app', '(a,1)', v(95), NULL, true);
SELECT registry.apply_row('app', '(a,1)', v(95), 'n2', NULL);

SELECT * FROM registry.verify();
DROP TABLE app, audit;
DROP FUNCTION v(int), audit_it();

-- user code that catches an error (a subtransaction it aborts) while a row
-- is applied does not end the apply: the row keeps its remote version, and
-- a later local write is this node's own again
CREATE TABLE catcher (k int PRIMARY KEY, v int);
CREATE FUNCTION catcher_trg() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM 1 / 0;
    EXCEPTION WHEN division_by_zero THEN
        NULL;
    END;
    RETURN NEW;
END $$;
CREATE TRIGGER catcher_trg BEFORE INSERT OR UPDATE ON catcher
    FOR EACH ROW EXECUTE FUNCTION catcher_trg();
ALTER TABLE catcher ENABLE ALWAYS TRIGGER catcher_trg;
SELECT registry.replicate('catcher');
SELECT registry.apply_row('catcher', '1', 12345, 'elsewhere', false, '{"k": 1, "v": 1}');
SELECT registry.apply_row('catcher', '2', 12346, 'elsewhere', true);
SELECT key, version, origin, deleted FROM registry.versions('catcher') ORDER BY key;
UPDATE catcher SET v = 2;
SELECT registry_version > 12345 AS restamped, registry_origin FROM catcher;
SELECT * FROM registry.verify('catcher');
DROP TABLE catcher;
DROP FUNCTION catcher_trg();

-- A column GENERATED ALWAYS AS IDENTITY that is not the key: applied rows
-- keep the peer's value on insert (OVERRIDING SYSTEM VALUE); an update
-- leaves it alone, since no UPDATE may set it.
CREATE TABLE idt (k int PRIMARY KEY, n int GENERATED ALWAYS AS IDENTITY, v text);
SELECT registry.replicate('idt');
INSERT INTO idt (k, v) VALUES (1, 'a');
SELECT registry.apply_row('idt', '2', 12345, 'elsewhere', false, '{"k": 2, "n": 7, "v": "c"}');
SELECT registry.apply_row('idt', '1', registry.hlc_now() + 1000, 'elsewhere', false, '{"k": 1, "n": 1, "v": "b"}');
SELECT k, n, v, registry_origin FROM idt ORDER BY k;
SELECT * FROM registry.verify('idt');
DROP TABLE idt;

-- A key with a live row is updated without a statement (apply.c,
-- update_direct): the peer's values, the remote version, constraints
-- checked (CHECK, a unique column) and nothing written on error.  The
-- BEFORE UPDATE trigger named after registry_stamp makes registry_capture
-- fire for UPDATE too (its event must find the table, and leak nothing);
-- the trigger itself, enabled ORIGIN, does not fire for applied rows.
CREATE TABLE upd (k int PRIMARY KEY, v int CHECK (v < 100), u text UNIQUE);
CREATE FUNCTION upd_trg() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.v := -1;
    RETURN NEW;
END $$;
CREATE TRIGGER zz_upd BEFORE UPDATE ON upd FOR EACH ROW EXECUTE FUNCTION upd_trg();
SELECT registry.replicate('upd');
INSERT INTO upd VALUES (1, 1, 'a'), (2, 2, 'b');
SELECT registry.apply_row('upd', '1', registry.hlc_now() + 1000, 'elsewhere', false, '{"k": 1, "v": 5, "u": "a2"}');
SELECT k, v, u, registry_origin FROM upd ORDER BY k;
SELECT key, op, origin FROM registry.change_log WHERE table_name = 'public.upd' ORDER BY seq;
SELECT error_of($$SELECT registry.apply_row('upd', '1', registry.hlc_now() + 2000, 'elsewhere', false, '{"k": 1, "v": 500, "u": "a3"}')$$);
SELECT error_of($$SELECT registry.apply_row('upd', '2', registry.hlc_now() + 3000, 'elsewhere', false, '{"k": 2, "v": 2, "u": "a2"}')$$);
SELECT k, v, u, registry_origin FROM upd ORDER BY k;
SELECT * FROM registry.verify('upd');
DROP TABLE upd;
DROP FUNCTION upd_trg();

-- A value too long for its column's modifier (a peer whose column is
-- wider) is refused with an error on every path, never cut short: the
-- statement for a new key, the update in place for an existing one.
CREATE TABLE narrow (k varchar(3) PRIMARY KEY, v varchar(3), b bit(2));
SELECT registry.replicate('narrow');
INSERT INTO narrow VALUES ('a', 'x', B'01');
SELECT error_of($$SELECT registry.apply_row('narrow', 'b', registry.hlc_now() + 1000, 'elsewhere', false, '{"k": "b", "v": "toolong", "b": "01"}')$$);
SELECT error_of($$SELECT registry.apply_row('narrow', 'a', registry.hlc_now() + 1000, 'elsewhere', false, '{"k": "a", "v": "toolong", "b": "01"}')$$);
SELECT error_of($$SELECT registry.apply_row('narrow', 'b', registry.hlc_now() + 1000, 'elsewhere', false, '{"k": "b", "v": "ok", "b": "011"}')$$);
SELECT error_of($$SELECT registry.apply_row('narrow', 'abcd', registry.hlc_now() + 1000, 'elsewhere', true)$$);
SELECT registry.apply_row('narrow', 'a', registry.hlc_now() + 2000, 'elsewhere', false, '{"k": "a", "v": "fit", "b": "10"}');
SELECT k, v, b, registry_origin FROM narrow ORDER BY k;
SELECT * FROM registry.verify('narrow');
DROP TABLE narrow;
