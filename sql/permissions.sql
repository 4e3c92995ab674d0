-- Who may do what: superusers and registry_admin administer; registry_peer
-- may only call the serving functions; other roles nothing.

CREATE TABLE perm (id int PRIMARY KEY, v text);
SELECT registry.replicate('perm');
CREATE ROLE alice;          -- owns a table, not an admin
CREATE ROLE admin_bob IN ROLE registry_admin;
CREATE ROLE peer_carol IN ROLE registry_peer;
CREATE TABLE alice_t (id int PRIMARY KEY);
ALTER TABLE alice_t OWNER TO alice;
GRANT ALL ON perm TO alice, admin_bob, peer_carol;
GRANT ALL ON SCHEMA public TO alice, admin_bob;

SET ROLE alice;
SELECT registry.replicate('alice_t');
SELECT registry.unreplicate('perm');
SELECT * FROM registry.node;
SELECT * FROM registry.tables;
SELECT registry.changes_since(0);
SELECT registry.table_pages('public.perm');
SELECT * FROM registry.tombstones;
SELECT * FROM registry.row_keys;
SELECT registry.apply_row('perm', '1', 1, 'x', true);
-- writing a registry table is fine for anyone allowed to write the table
INSERT INTO perm VALUES (1, 'by alice');
UPDATE perm SET v = 'by alice again';
DELETE FROM perm;
RESET ROLE;

SET ROLE admin_bob;
SELECT registry.replicate('alice_t');
SELECT state FROM registry.node;
SELECT table_name FROM registry.tables ORDER BY 1;
SELECT count(*) FROM registry.verify();
SELECT registry.unreplicate('alice_t');
-- an admin who is not a superuser administers fully: the functions write
-- the extension's own tables on the admin's behalf
CREATE TABLE bob_t (id int PRIMARY KEY, v text);
SELECT registry.replicate('bob_t');
INSERT INTO bob_t VALUES (1, 'one'), (2, 'two');
DELETE FROM bob_t WHERE id = 2;
SELECT key, deleted FROM registry.versions('bob_t') ORDER BY key;
-- a peer added by a non-superuser is reached with its own password, never
-- with this server's identity (peer, trust, ~/.pgpass, certificates)
SELECT registry.add_peer('bobs_peer', 'host=/nonexistent dbname=x');
SELECT registry.add_peer('bobs_peer', 'host=/nonexistent dbname=x password=');
SELECT registry.add_peer('bobs_peer', 'host=/nonexistent dbname=x password=pw');
SELECT registry.add_peer('bobs_peer', 'host=/nonexistent dbname=y password=pw');
SELECT peer FROM registry.peer_status;
SELECT name, password_required FROM registry.peers;
-- a connection string libpq cannot parse: its tokens are not echoed
SELECT registry.add_peer('bad', 'postgresql://u:sec%zzret1@h/db');
SELECT registry.add_peer('bad', 'postgresql://h/db?password=sec%zzret1');
SELECT registry.add_peer('bad', 'host=h password secret1');
SELECT registry.purge_tombstones();
SELECT registry.resync('bob_t');
SELECT count(*) AS rows_left FROM bob_t;
SELECT registry.remove_peer('bobs_peer');
SELECT registry.unreplicate('bob_t');
-- but still may not touch them directly
INSERT INTO registry.peers (name, conninfo) VALUES ('forged', '');
DELETE FROM registry.tombstones;
DELETE FROM registry.row_keys;
DROP TABLE bob_t;
RESET ROLE;

SET ROLE peer_carol;
CREATE TEMP TABLE answers AS
SELECT registry.changes_since(0, 1) AS c, registry.digest('public.perm') AS d,
       registry.fetch_rows('public.perm', '{1}') AS r,
       registry.bucket_entries('public.perm', 1, '{0}') AS e;
SELECT count(*) AS pages FROM (SELECT registry.table_pages('public.perm')) x;
-- peers need not decode: the one function a message can make costly
SELECT registry.decode_message(c) FROM answers;
RESET ROLE;
SELECT registry.decode_message(c)->>'status' AS status,
       registry.decode_message(d)->>'table' AS tbl,
       registry.decode_message(r)->'rows'->0->>'state' AS state,
       registry.decode_message(e)->>'more' AS more
FROM answers;
DROP TABLE answers;
SET ROLE peer_carol;
SELECT * FROM registry.node;
SELECT registry.replicate('perm');
SELECT * FROM registry.tombstones;
SELECT registry.set_clock_offset('1 hour');
RESET ROLE;

-- serving functions read only registered tables
CREATE TABLE secret (id int PRIMARY KEY, pw text);
INSERT INTO secret VALUES (1, 'hunter2');
SET ROLE peer_carol;
SELECT registry.fetch_rows('public.secret', '{1}');
SELECT registry.bucket_entries('public.secret', 1, '{0}', true);
SELECT registry.table_pages('public.secret');
RESET ROLE;

-- an admin works only on tables it may work on by hand, and is refused
-- before anything is locked or written
CREATE TABLE noperm (id int PRIMARY KEY, v text);
SELECT registry.replicate('noperm');
SET ROLE admin_bob;
SELECT registry.apply_row('noperm', '1', 1, 'x', true);
SELECT registry.apply_row('noperm', '2', 1, 'x', false, '{"id": 2, "v": "forged"}');
SELECT registry.resync('noperm');
SELECT registry.resync('pg_class');
SELECT registry.versions('noperm');
SELECT registry.verify('noperm');
RESET ROLE;
SELECT count(*) AS no_keys FROM registry.versions('noperm');
-- two of the three privileges apply_row needs are not enough
GRANT INSERT, UPDATE ON noperm TO admin_bob;
SET ROLE admin_bob;
SELECT registry.apply_row('noperm', '1', 1, 'x', true);
RESET ROLE;
GRANT SELECT, INSERT, UPDATE, DELETE ON noperm TO admin_bob;
SET ROLE admin_bob;
SELECT registry.apply_row('noperm', '1', 1, 'x', true);
SELECT key, version, origin, deleted FROM registry.versions('noperm');
RESET ROLE;
SELECT registry.unreplicate('noperm');

-- apply_row by a caller who is not the table's owner writes as that caller:
-- row-level security holds (the owner's code does not run with the
-- owner's rights on the caller's behalf)
CREATE TABLE tenant_rows (k text PRIMARY KEY, tenant text, v text);
SELECT registry.replicate('tenant_rows');
INSERT INTO tenant_rows VALUES ('alice-1', 'alice', 'alice''s');
ALTER TABLE tenant_rows ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON tenant_rows USING (tenant = current_user);
GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_rows TO admin_bob;
SET ROLE admin_bob;
SELECT count(*) AS visible FROM tenant_rows;
SELECT registry.apply_row('tenant_rows', 'alice-1', registry.hlc_now(), 'x', false,
                          '{"k": "alice-1", "tenant": "alice", "v": "overwritten by bob"}');
SELECT registry.apply_row('tenant_rows', 'alice-2', registry.hlc_now(), 'x', false,
                          '{"k": "alice-2", "tenant": "alice", "v": "planted by bob"}');
RESET ROLE;
SELECT k, v FROM tenant_rows ORDER BY k;
SELECT registry.unreplicate('tenant_rows');

-- nor does apply_row by a non-superuser switch off foreign keys (replica
-- mode is the sync worker's and superusers'): no orphan row in a table
-- whose parent the caller does not own
CREATE TABLE fk_parent (id int PRIMARY KEY);
CREATE TABLE fk_child (id int PRIMARY KEY, parent int REFERENCES fk_parent);
SELECT registry.replicate('fk_child');
GRANT SELECT, INSERT, UPDATE, DELETE ON fk_child TO admin_bob;
SET ROLE admin_bob;
SELECT registry.apply_row('fk_child', '1', registry.hlc_now(), 'x', false,
                          '{"id": 1, "parent": 42}');
RESET ROLE;
SELECT count(*) AS orphans FROM fk_child;
SELECT registry.unreplicate('fk_child');
DROP TABLE fk_child, fk_parent;
DROP TABLE tenant_rows;

-- the serving functions are for peers, not for admins: they read every
-- registered table whatever the caller may read
SET ROLE admin_bob;
SELECT registry.changes_since(0);
SELECT registry.fetch_rows('public.perm', '{1}');
RESET ROLE;

REVOKE ALL ON SCHEMA public FROM alice, admin_bob;
DROP TABLE perm, alice_t, secret, noperm;
DROP ROLE alice, admin_bob, peer_carol;
