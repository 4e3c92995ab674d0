-- Ephemeral tables (issue 14): registry.set_lease(), registry.renew(),
-- registry.leases, the stash of rows a peer deleted.  One node: a peer's
-- writes are played with registry.apply_row().  Nothing here waits for a
-- lease to run out: the TTLs are long, and what the expiry job may do
-- meanwhile (adopt rows that have no lease) changes no result shown.

CREATE TABLE eph (id int PRIMARY KEY, v text);
CREATE TABLE eph_unreg (id int PRIMARY KEY);
SELECT registry.replicate('eph');
CREATE TEMP TABLE eph_tid AS
    SELECT tid FROM registry.replicated_tables WHERE relid = 'eph'::regclass;
CREATE ROLE lease_alice;                        -- not an admin
CREATE ROLE lease_bob IN ROLE registry_admin;   -- an admin, not the owner
CREATE ROLE lease_carol;                        -- may UPDATE eph
CREATE ROLE lease_dave;                         -- may only read eph
GRANT SELECT, UPDATE ON eph TO lease_carol;
GRANT SELECT ON eph TO lease_dave;

-- ---- set_lease: who, which tables, which TTLs ----
-- registry tables only
SELECT registry.set_lease('eph_unreg', '1 minute');
-- 100 ms to 1 year
SELECT error_of($$SELECT registry.set_lease('eph', '99 milliseconds')$$);
SELECT error_of($$SELECT registry.set_lease('eph', '1 year 1 day')$$);
SELECT error_of($$SELECT registry.set_lease('eph', '-1 hour')$$);
SELECT registry.set_lease('eph', '1 year');
SELECT registry.set_lease('eph', '100 milliseconds');
SELECT lease_ttl FROM registry.replicated_tables WHERE relid = 'eph'::regclass;
SELECT registry.set_lease(NULL, '1 minute');
-- administrators who own the table only
SET ROLE lease_alice;
SELECT error_of($$SELECT registry.set_lease('eph', '1 minute')$$);
SELECT error_of($$SELECT * FROM registry._leases()$$);
SELECT error_of($$SELECT * FROM registry.leases$$);
RESET ROLE;
SET ROLE lease_bob;
SELECT error_of($$SELECT registry.set_lease('eph', '1 minute')$$);
SELECT count(*) >= 0 AS admin_reads_leases FROM registry.leases;
RESET ROLE;

-- ---- renew: which tables, who, which keys ----
-- persistent again, then not ephemeral
SELECT registry.set_lease('eph', NULL);
SELECT lease_ttl FROM registry.replicated_tables WHERE relid = 'eph'::regclass;
SELECT registry.renew('eph', '{1}');
SELECT error_of($$SELECT registry.renew('eph_unreg', '{1}')$$);
SELECT registry.set_lease('eph', '1 hour');
SELECT lease_ttl FROM registry.replicated_tables WHERE relid = 'eph'::regclass;
-- UPDATE privilege on the table
SET ROLE lease_dave;
SELECT error_of($$SELECT registry.renew('eph', '{1}')$$);
RESET ROLE;
-- no null keys; a null array is a null answer (STRICT)
SELECT error_of($$SELECT registry.renew('eph', '{1,NULL}')$$);
SELECT registry.renew('eph', NULL) IS NULL AS null_answer;
SELECT registry.renew('eph', '{}');

-- ---- writes grant leases at commit ----
CREATE TEMP TABLE c0 AS SELECT * FROM registry.node;
INSERT INTO eph VALUES (1, 'one'), (2, 'two');
SELECT key, owner, renewals, deadline IS NOT NULL AS has_deadline,
       remaining > interval '59 minutes' AS full_ttl, session_pid
  FROM registry.leases WHERE table_name = 'public.eph' ORDER BY key;

-- ---- case 1: a lease held here is renewed without a write ----
CREATE TEMP TABLE s0 AS SELECT last_seq FROM registry.node;
BEGIN;
SELECT registry.renew('eph', '{1,2}');
SELECT pg_current_xact_id_if_assigned() IS NULL AS nothing_written;
COMMIT;
SELECT (SELECT last_seq FROM registry.node) = last_seq AS nothing_published FROM s0;
-- by anyone who may UPDATE the table; keys given twice, or written
-- differently, are renewed all the same
SET ROLE lease_carol;
SELECT registry.renew('eph', '{1,1,01}');
RESET ROLE;
SELECT key, renewals FROM registry.leases WHERE table_name = 'public.eph' ORDER BY key;
SELECT n.lease_renewals - c.lease_renewals AS renewals,
       n.lease_grants - c.lease_grants >= 2 AS granted
  FROM registry.node n, c0 c;

-- ---- case 5: no row: the key comes back (once) ----
SELECT registry.renew('eph', '{1,99,98,99,099}');

-- ---- case 2: the row is this node's, its lease gone: granted, no write ----
-- (persistent and ephemeral again: the leases are dropped; the expiry job
-- may give them back meanwhile, then this is case 1)
SELECT registry.set_lease('eph', NULL);
SELECT count(*) AS leases FROM registry._leases() WHERE tid = (SELECT tid FROM eph_tid);
SELECT registry.set_lease('eph', '1 hour');
BEGIN;
SELECT registry.renew('eph', '{2}');
SELECT pg_current_xact_id_if_assigned() IS NULL AS nothing_written;
COMMIT;
SELECT key FROM registry.leases WHERE table_name = 'public.eph' AND key = '2';

-- ---- case 3: another node's row becomes this node's, with one write ----
CREATE TEMP TABLE c1 AS SELECT * FROM registry.node;
SELECT registry.apply_row('eph', '3', registry.hlc_now() + 100, 'n9', false,
                          '{"id": 3, "v": "remote"}');
SELECT count(*) AS leases_of_3 FROM registry.leases
 WHERE table_name = 'public.eph' AND key = '3';
SELECT registry.renew('eph', '{3}');
SELECT id, v, registry_origin FROM eph WHERE id = 3;
SELECT key, renewals FROM registry.leases WHERE table_name = 'public.eph' AND key = '3';
SELECT key, op, origin, reason FROM registry.change_log
 WHERE table_name = 'public.eph' AND seq > (SELECT last_seq FROM c1) ORDER BY seq;
SELECT n.lease_ownership_moves - c.lease_ownership_moves AS moves
  FROM registry.node n, c1 c;

-- ---- case 4: a peer deleted this node's row: written again from the stash ----
CREATE TEMP TABLE c2 AS SELECT * FROM registry.node;
SELECT registry.apply_row('eph', '1', registry.hlc_now() + 100, 'n9', true);
SELECT count(*) AS leases_of_1 FROM registry.leases
 WHERE table_name = 'public.eph' AND key = '1';
SELECT key, "row", owned_version > 0 AS has_version
  FROM registry.lease_stash WHERE tid = (SELECT tid FROM eph_tid);
-- a delete of this node's own does not stash
DELETE FROM eph WHERE id = 2;
SELECT key FROM registry.lease_stash WHERE tid = (SELECT tid FROM eph_tid);
SELECT registry.renew('eph', '{1,2}');
SELECT id, v, registry_origin FROM eph ORDER BY id;
SELECT count(*) AS stashed FROM registry.lease_stash WHERE tid = (SELECT tid FROM eph_tid);
SELECT key, renewals FROM registry.leases WHERE table_name = 'public.eph' ORDER BY key;
SELECT n.lease_reregistrations - c.lease_reregistrations AS reregistrations
  FROM registry.node n, c2 c;
SELECT key, op, origin, reason FROM registry.change_log
 WHERE table_name = 'public.eph' AND seq > (SELECT last_seq FROM c2) ORDER BY seq;

-- ---- a stashed row does not come back over newer history ----
-- row 6 is this node's; a peer deletes it (stashed), another node writes
-- the key again and deletes it on purpose: renew() must not write the
-- stashed row over that delete, and returns the key instead
INSERT INTO eph VALUES (6, 'old');
SELECT registry.apply_row('eph', '6', registry.hlc_now() + 100, 'n9', true);
SELECT key, "row" FROM registry.lease_stash
 WHERE tid = (SELECT tid FROM eph_tid) AND key = '6';
SELECT registry.apply_row('eph', '6', registry.hlc_now() + 200, 'n8', false,
                          '{"id": 6, "v": "n8 row"}');
SELECT registry.apply_row('eph', '6', registry.hlc_now() + 300, 'n8', true);
SELECT registry.renew('eph', '{6}') AS returned;
SELECT count(*) AS rows_6 FROM eph WHERE id = 6;
SELECT count(*) AS stashed FROM registry.lease_stash
 WHERE tid = (SELECT tid FROM eph_tid) AND key = '6';
SELECT origin FROM registry.tombstones
 WHERE tid = (SELECT tid FROM eph_tid) AND key = '6';
-- row 7 is this node's; two peers expire it (every node of a majority
-- judges a silent owner): the later delete keeps the stashed row, which
-- renew() writes again
INSERT INTO eph VALUES (7, 'mine');
SELECT registry.apply_row('eph', '7', registry.hlc_now() + 100, 'n9', true);
SELECT registry.apply_row('eph', '7', registry.hlc_now() + 200, 'n8', true);
SELECT registry.renew('eph', '{7}') AS returned;
SELECT id, v, registry_origin FROM eph WHERE id = 7;
SELECT count(*) AS stashed FROM registry.lease_stash
 WHERE tid = (SELECT tid FROM eph_tid) AND key = '7';

-- ---- session-bound rows: no deadline while the session lives ----
SET registry.lease_session = on;
INSERT INTO eph VALUES (5, 'bound');
RESET registry.lease_session;
SELECT key, deadline IS NULL AS no_deadline, session_pid = pg_backend_pid() AS this_session
  FROM registry.leases WHERE table_name = 'public.eph' AND key = '5';
-- renewing unbinds
SELECT registry.renew('eph', '{5}');
SELECT key, deadline IS NOT NULL AS has_deadline, session_pid
  FROM registry.leases WHERE table_name = 'public.eph' AND key = '5';

-- ---- a set_lease() rolled back changes no lease ----
BEGIN;
SELECT registry.set_lease('eph', NULL);
ROLLBACK;
SELECT count(*) > 0 AS leases_kept FROM registry.leases WHERE table_name = 'public.eph';
SELECT lease_ttl FROM registry.replicated_tables WHERE relid = 'eph'::regclass;
BEGIN;
SAVEPOINT s;
SELECT registry.set_lease('eph', NULL);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT count(*) > 0 AS leases_kept FROM registry.leases WHERE table_name = 'public.eph';

-- ---- unreplicate() drops the table's leases and stash ----
SELECT registry.apply_row('eph', '5', registry.hlc_now() + 100, 'n9', true);
SELECT count(*) AS stashed FROM registry.lease_stash WHERE tid = (SELECT tid FROM eph_tid);
SELECT registry.unreplicate('eph');
SELECT count(*) AS leases FROM registry._leases() WHERE tid = (SELECT tid FROM eph_tid);
SELECT count(*) AS stashed FROM registry.lease_stash WHERE tid = (SELECT tid FROM eph_tid);

-- ---- one key's failed write costs that key only ----
-- A write of case 3 or 4 that fails (here a unique violation and a
-- trigger's error) is rolled back alone, reported as a WARNING, and its
-- key returned; the other keys of the call are renewed.
CREATE TABLE ueph (id int PRIMARY KEY, addr text UNIQUE);
SELECT registry.replicate('ueph');
SELECT registry.set_lease('ueph', '1 hour');
CREATE TEMP TABLE ueph_tid AS
    SELECT tid FROM registry.replicated_tables WHERE relid = 'ueph'::regclass;
CREATE FUNCTION ueph_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.addr = 'frozen' THEN
        RAISE EXCEPTION 'row % is frozen', NEW.id
            USING ERRCODE = 'P0001', DETAIL = 'Frozen rows do not move.';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER ueph_guard BEFORE UPDATE ON ueph
    FOR EACH ROW EXECUTE FUNCTION ueph_guard();
INSERT INTO ueph VALUES (1, 'a'), (2, 'b');
-- a peer deletes row 1, this node's: stashed; another row takes its address
SELECT registry.apply_row('ueph', '1', registry.hlc_now() + 100, 'n9', true);
INSERT INTO ueph VALUES (3, 'a');
-- rows 4 (frozen) and 5 are a peer's
SELECT registry.apply_row('ueph', '4', registry.hlc_now() + 100, 'n9', false,
                          '{"id": 4, "addr": "frozen"}');
SELECT registry.apply_row('ueph', '5', registry.hlc_now() + 100, 'n9', false,
                          '{"id": 5, "addr": "e"}');
SELECT key FROM registry.lease_stash WHERE tid = (SELECT tid FROM ueph_tid);
CREATE TEMP TABLE c3 AS SELECT * FROM registry.node;
-- the SQLSTATEs (this try is rolled back: the stash entry comes back)
\set VERBOSITY sqlstate
BEGIN;
SELECT registry.renew('ueph', '{1,4,5,2}');
ROLLBACK;
\set VERBOSITY default
SELECT key FROM registry.lease_stash WHERE tid = (SELECT tid FROM ueph_tid);
-- messages, details, and which key of which table
\set SHOW_CONTEXT always
SELECT registry.renew('ueph', '{1,4,5,2}');
\set SHOW_CONTEXT errors
-- 2 renewed (twice: a renewal is not undone by a rollback), 5 taken over,
-- 1 and 4 not written
SELECT key, renewals FROM registry.leases WHERE table_name = 'public.ueph' ORDER BY key;
SELECT id, addr, registry_origin FROM ueph ORDER BY id;
SELECT key, op, origin FROM registry.change_log
 WHERE table_name = 'public.ueph' AND seq > (SELECT last_seq FROM c3) ORDER BY seq;
SELECT n.lease_reregistrations - c.lease_reregistrations AS reregistrations,
       n.lease_ownership_moves - c.lease_ownership_moves AS moves
  FROM registry.node n, c3 c;
-- the stashed row that cannot be written again is dropped: no second WARNING
SELECT count(*) AS stashed FROM registry.lease_stash WHERE tid = (SELECT tid FROM ueph_tid);
SELECT registry.renew('ueph', '{1,2}');

-- ---- SELECT and UPDATE privileges ----
CREATE ROLE lease_frank;                        -- may UPDATE ueph, not SELECT
GRANT UPDATE ON ueph TO lease_frank;
SET ROLE lease_frank;
SELECT registry.renew('ueph', '{2}');
RESET ROLE;

-- ---- row-level security: a row the caller cannot see is not renewed ----
CREATE TABLE reph (id int PRIMARY KEY, team text);
SELECT registry.replicate('reph');
SELECT registry.set_lease('reph', '1 hour');
INSERT INTO reph VALUES (1, 'red'), (2, 'blue');
SELECT registry.apply_row('reph', '3', registry.hlc_now() + 100, 'n9', false,
                          '{"id": 3, "team": "blue"}');
SELECT registry.apply_row('reph', '4', registry.hlc_now() + 100, 'n9', false,
                          '{"id": 4, "team": "red"}');
CREATE ROLE lease_erin;                         -- sees the red rows only
GRANT SELECT, UPDATE ON reph TO lease_erin;
ALTER TABLE reph ENABLE ROW LEVEL SECURITY;
CREATE POLICY red_rows ON reph FOR SELECT USING (team = 'red');
CREATE POLICY any_update ON reph FOR UPDATE USING (true);
CREATE TEMP TABLE r0 AS
    SELECT key, renewals FROM registry.leases WHERE table_name = 'public.reph';
SET ROLE lease_erin;
SELECT id, team FROM reph ORDER BY id;
-- 1 (case 1) and 4 (case 3) are red; 2 (a lease held here) and 3 (a
-- peer's) are blue: returned, as a key without a row would be
SELECT registry.renew('reph', '{1,2,3,4,99}');
RESET ROLE;
SELECT l.key, l.renewals - coalesce(r.renewals, 0) AS renewed
  FROM registry.leases l LEFT JOIN r0 r USING (key)
 WHERE l.table_name = 'public.reph' ORDER BY l.key;
SELECT id, team, registry_origin FROM reph ORDER BY id;
-- the policies do not bind the table's owner (here a superuser)
SELECT registry.renew('reph', '{2}');

SELECT registry.unreplicate('ueph');
SELECT registry.unreplicate('reph');
DROP TABLE ueph, reph;
DROP FUNCTION ueph_guard();

-- ---- the new columns of registry.node and registry.change_log ----
SELECT lease_capacity, leases_used >= 0 AS used, lease_evictions, expiry_minority,
       leases_expired + sessions_expired + owner_expired >= 0 AS expired,
       expiry_held_minority + expiry_held_cap >= 0 AS held
  FROM registry.node;
SELECT attname FROM pg_attribute
 WHERE attrelid = 'registry.change_log'::regclass AND attname = 'reason';

DROP TABLE eph, eph_unreg;
DROP OWNED BY lease_alice, lease_bob, lease_carol, lease_dave, lease_erin, lease_frank;
DROP ROLE lease_alice, lease_bob, lease_carol, lease_dave, lease_erin, lease_frank;

-- a caller that may not INSERT leaves the stashed row for one that may
CREATE TABLE seph (id int PRIMARY KEY, v text);
SELECT registry.replicate('seph');
SELECT registry.set_lease('seph', '1 minute');
INSERT INTO seph VALUES (1, 'a');
SELECT registry.apply_row('seph', '1', registry.hlc_now() + 1000, 'n9', true);
SELECT count(*) AS stashed FROM registry.lease_stash s JOIN registry.replicated_tables r USING (tid) WHERE r.relid = 'seph'::regclass;
CREATE ROLE lease_gina;
GRANT SELECT, UPDATE ON seph TO lease_gina;
SET ROLE lease_gina;
SELECT registry.renew('seph', '{1}');
RESET ROLE;
SELECT count(*) AS stashed FROM registry.lease_stash s JOIN registry.replicated_tables r USING (tid) WHERE r.relid = 'seph'::regclass;
SELECT registry.renew('seph', '{1}');
SELECT id, v, registry_origin = current_setting('registry.node_name') AS ours FROM seph;
DROP TABLE seph;
DROP ROLE lease_gina;
