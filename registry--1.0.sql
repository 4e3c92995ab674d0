/* registry--1.0.sql: replicated, multi-master registry tables */

\echo Use "CREATE EXTENSION registry" to load this file. \quit

-- Refuse to install where the background machinery cannot run.
CREATE FUNCTION registry._assert_preloaded() RETURNS void
    AS 'MODULE_PATHNAME', 'registry_assert_preloaded' LANGUAGE C PARALLEL UNSAFE;
SELECT registry._assert_preloaded();

-- Roles: registry_admin administers tables and peers and reads the views;
-- registry_peer is what other nodes connect as: it may only call the
-- serving functions.  Roles are cluster-wide and outlive the extension.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'registry_admin') THEN
        CREATE ROLE registry_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'registry_peer') THEN
        CREATE ROLE registry_peer NOLOGIN;
    END IF;
END
$$;

-- ---------------------------------------------------------------------
-- Durable state
-- ---------------------------------------------------------------------

CREATE TABLE registry.replicated_tables (
    tid           integer PRIMARY KEY,
    relid         regclass NOT NULL UNIQUE,
    -- true while a whole-table pull has the key-hash index dropped
    khash_deferred boolean NOT NULL DEFAULT false,
    key_columns   name[] NOT NULL,
    key_types     text[] NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    -- newest version among this table's purged tombstones: an unknown key
    -- arriving with an older version may have been deleted here
    purge_horizon bigint NOT NULL DEFAULT 0,
    -- '<system identifier>.<extension OID>' of the instance and extension
    -- that registered the table; any other value means the row was restored
    -- from a dump, and the table is taken up again once the restore has
    -- made it whole
    incarnation   text NOT NULL,
    -- ephemeral tables: every live row holds a lease of this length,
    -- renewed with registry.renew(); NULL: persistent (registry.set_lease)
    lease_ttl     interval
);
CREATE SEQUENCE registry.replicated_tables_tid_seq
    OWNED BY registry.replicated_tables.tid;
ALTER TABLE registry.replicated_tables
    ALTER tid SET DEFAULT nextval('registry.replicated_tables_tid_seq');

-- The versions of live rows are in the rows (columns registry_version and
-- registry_origin, added by registry.replicate); a deleted key keeps the
-- version of its deletion here.  khash places the key in its digest bucket.
CREATE TABLE registry.tombstones (
    tid        integer NOT NULL,
    khash      integer NOT NULL,
    key        text COLLATE "C" NOT NULL,
    version    bigint NOT NULL,
    origin     text COLLATE "C" NOT NULL,
    written_at timestamptz NOT NULL,    -- when written on this node
    PRIMARY KEY (tid, khash, key)
);

-- The key of every live row of every registry table, by key hash: how a
-- digest bucket's rows are found (registry.bucket_entries).  Written when
-- a key is inserted or deleted, never by an UPDATE that keeps the key, so
-- that the registry table itself needs no index beyond its primary key.
-- Derived from the tables: not dumped, rebuilt when a restored table is
-- taken up.
CREATE TABLE registry.row_keys (
    tid        integer NOT NULL,
    khash      integer NOT NULL,
    key        text COLLATE "C" NOT NULL,
    PRIMARY KEY (tid, khash, key)
);

-- Rows this node owned in an ephemeral table that a peer's change
-- deleted (a peer expired them while this node was out of its reach):
-- registry.renew() of such a key writes the row again, as a new version
-- (a re-registration).  Kept until stashed_at + the table's TTL +
-- registry.owner_timeout.  Local to this node: not dumped.
CREATE TABLE registry.lease_stash (
    tid           integer NOT NULL,
    khash         integer NOT NULL,
    key           text COLLATE "C" NOT NULL,
    "row"         jsonb NOT NULL,
    owned_version bigint NOT NULL,
    -- the version of the peer's delete: the row is written again only
    -- while that delete is still the key's latest change
    deleted_version bigint NOT NULL,
    stashed_at    timestamptz NOT NULL,
    PRIMARY KEY (tid, khash, key)
);

-- The nodes this node pulls from.  conninfo may hold a password: only
-- superusers and registry_admin can read this table.
CREATE TABLE registry.peers (
    name              text PRIMARY KEY,
    conninfo          text NOT NULL,
    -- false only when a superuser added the peer: the sync worker then may
    -- reach it without a password (trust, peer or certificate
    -- authentication with this server's own identity)
    password_required boolean NOT NULL DEFAULT true,
    added_at          timestamptz NOT NULL DEFAULT now(),
    -- start of the last anti-entropy round after which every table
    -- matched the peer's: it then had every tombstone written here before
    last_converged_at timestamptz
);

-- pg_dump carries the registry's state with the tables it describes.
SELECT pg_catalog.pg_extension_config_dump('registry.replicated_tables', '');
SELECT pg_catalog.pg_extension_config_dump('registry.replicated_tables_tid_seq', '');
SELECT pg_catalog.pg_extension_config_dump('registry.tombstones', '');
SELECT pg_catalog.pg_extension_config_dump('registry.peers', '');

-- ---------------------------------------------------------------------
-- Registration
-- ---------------------------------------------------------------------

CREATE FUNCTION registry.replicate(tbl regclass) RETURNS boolean
    AS 'MODULE_PATHNAME', 'registry_replicate' LANGUAGE C STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.replicate(regclass) IS
    'make a table a registry table (true if it was not one already)';

CREATE FUNCTION registry.unreplicate(tbl regclass) RETURNS boolean
    AS 'MODULE_PATHNAME', 'registry_unreplicate' LANGUAGE C STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.unreplicate(regclass) IS
    'stop replicating a table and forget its versions (true if it was registered)';

CREATE FUNCTION registry.set_lease(tbl regclass, ttl interval) RETURNS void
    AS 'MODULE_PATHNAME', 'registry_set_lease' LANGUAGE C PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.set_lease(regclass, interval) IS
    'make a registry table ephemeral: each row lives ttl after its last renewal (NULL: persistent)';

CREATE FUNCTION registry.renew(tbl regclass, keys text[]) RETURNS text[]
    AS 'MODULE_PATHNAME', 'registry_renew' LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.renew(regclass, text[]) IS
    'renew the leases of keys of an ephemeral table; returns the keys that have no row';

CREATE FUNCTION registry.stamp() RETURNS trigger
    AS 'MODULE_PATHNAME', 'registry_stamp' LANGUAGE C PARALLEL UNSAFE;
CREATE FUNCTION registry.capture() RETURNS trigger
    AS 'MODULE_PATHNAME', 'registry_capture' LANGUAGE C PARALLEL UNSAFE;
CREATE FUNCTION registry.capture_truncate() RETURNS trigger
    AS 'MODULE_PATHNAME', 'registry_capture_truncate' LANGUAGE C PARALLEL UNSAFE;

CREATE FUNCTION registry._check_tables() RETURNS void
    AS 'MODULE_PATHNAME', 'registry_check_tables' LANGUAGE C PARALLEL UNSAFE;

-- Refuse DDL that would silently stop replication or change keys.
CREATE FUNCTION registry._on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM registry._check_tables();
END
$$;
CREATE EVENT TRIGGER registry_ddl ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER TRIGGER', 'DROP INDEX', 'ALTER INDEX',
                 'CREATE TRIGGER', 'DROP TRIGGER')
    EXECUTE FUNCTION registry._on_ddl();

-- A dropped registry table is unregistered with it.
CREATE FUNCTION registry._on_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    obj record;
BEGIN
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects()
               WHERE object_type = 'table'
    LOOP
        DELETE FROM registry.tombstones v
         USING registry.replicated_tables t
         WHERE t.relid = obj.objid AND v.tid = t.tid;
        DELETE FROM registry.row_keys v
         USING registry.replicated_tables t
         WHERE t.relid = obj.objid AND v.tid = t.tid;
        DELETE FROM registry.lease_stash v
         USING registry.replicated_tables t
         WHERE t.relid = obj.objid AND v.tid = t.tid;
        DELETE FROM registry.replicated_tables WHERE relid = obj.objid;
    END LOOP;
END
$$;
CREATE EVENT TRIGGER registry_drop ON sql_drop
    EXECUTE FUNCTION registry._on_drop();

-- Parallel safety, function by function: the pure computations
-- (key_hash, version_time, decode_message, _table_name) are PARALLEL SAFE;
-- everything else PARALLEL UNSAFE, the readers included: they look the
-- table up in registry.replicated_tables under the latest snapshot, which
-- PostgreSQL refuses in parallel mode (in the leader of a parallel plan
-- too), and a query calling them must not get a parallel plan.

-- The bucket hash of a key (registry.row_keys.khash, in peers' answers).
CREATE FUNCTION registry.key_hash(VARIADIC "any") RETURNS integer
    AS 'MODULE_PATHNAME', 'registry_key_hash' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- A key's column values as text (keys of several columns are written
-- "(a,b)" with quotes and escapes: applications need not parse that), and
-- the row of a key as JSON, read with the caller's privileges.
CREATE FUNCTION registry.key_values(tbl regclass, key text) RETURNS text[]
    AS 'MODULE_PATHNAME', 'registry_key_values' LANGUAGE C STABLE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.key_values(regclass, text) IS
    'the column values of a key text, in primary-key order';
CREATE FUNCTION registry.get_row(tbl regclass, key text) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'registry_get_row' LANGUAGE C STABLE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.get_row(regclass, text) IS
    'the row of a key text as JSON, or null';

-- ---------------------------------------------------------------------
-- Peers
-- ---------------------------------------------------------------------

CREATE FUNCTION registry.add_peer(name text, conninfo text) RETURNS void
    AS 'MODULE_PATHNAME', 'registry_add_peer' LANGUAGE C STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.add_peer(text, text) IS
    'pull from another node, reached with a libpq connection string';

CREATE FUNCTION registry.remove_peer(name text) RETURNS boolean
    AS 'MODULE_PATHNAME', 'registry_remove_peer' LANGUAGE C STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.remove_peer(text) IS
    'stop pulling from a node (true if it was a peer)';

CREATE FUNCTION registry.sync_now(peer text DEFAULT NULL,
                                  timeout interval DEFAULT '30s')
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'registry_sync_now' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.sync_now(text, interval) IS
    'wait for a complete sync round with a peer (or all); true if converged';

CREATE FUNCTION registry.purge_tombstones() RETURNS bigint
    AS 'MODULE_PATHNAME', 'registry_purge_tombstones' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.purge_tombstones() IS
    'purge the tombstones every peer is known to have (returns how many)';

CREATE FUNCTION registry.resync(tbl regclass) RETURNS void
    AS 'MODULE_PATHNAME', 'registry_resync' LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.resync(regclass) IS
    'discard this node''s copy of a table and refill it from the peers';

-- ---------------------------------------------------------------------
-- Clock
-- ---------------------------------------------------------------------

CREATE FUNCTION registry.hlc_now() RETURNS bigint
    AS 'MODULE_PATHNAME', 'registry_hlc_now' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.hlc_now() IS
    'issue a new hybrid logical clock stamp';

CREATE FUNCTION registry.hlc_update(remote bigint) RETURNS bigint
    AS 'MODULE_PATHNAME', 'registry_hlc_update' LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.hlc_update(bigint) IS
    'advance the clock past a received version (superuser)';

CREATE FUNCTION registry.set_clock_offset(offset_by interval) RETURNS void
    AS 'MODULE_PATHNAME', 'registry_set_clock_offset' LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.set_clock_offset(interval) IS
    'shift this node''s wall clock, for testing clock steps (superuser)';

CREATE FUNCTION registry.version_time(version bigint) RETURNS timestamptz
    AS 'MODULE_PATHNAME', 'registry_version_time' LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION registry.version_time(bigint) IS
    'wall-clock part of a version';

-- ---------------------------------------------------------------------
-- Serving functions (called by peers)
-- ---------------------------------------------------------------------
-- Values travel in canonical settings (DateStyle, TimeZone, ...): the
-- functions switch to them when a table's types need it.

CREATE FUNCTION registry.changes_since(after_seq bigint,
                                       max_changes integer DEFAULT 1000,
                                       with_rows boolean DEFAULT false,
                                       epoch bigint DEFAULT NULL,
                                       exclude_origin text DEFAULT NULL,
                                       wait_ms integer DEFAULT 0,
                                       max_bytes integer DEFAULT NULL,
                                       skip_origins text[] DEFAULT NULL)
    RETURNS bytea
    AS 'MODULE_PATHNAME', 'registry_changes_since' LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION registry.digest(tbl text,
                                nbuckets integer DEFAULT 0,
                                lo integer DEFAULT 0,
                                width integer DEFAULT 0,
                                n integer DEFAULT 0)
    RETURNS bytea
    AS 'MODULE_PATHNAME', 'registry_digest' LANGUAGE C VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog;

CREATE FUNCTION registry.bucket_entries(tbl text,
                                        nbuckets integer,
                                        buckets integer[],
                                        with_rows boolean DEFAULT false,
                                        after_hash integer DEFAULT NULL,
                                        max_entries integer DEFAULT 10000,
                                        max_bytes integer DEFAULT NULL)
    RETURNS bytea
    AS 'MODULE_PATHNAME', 'registry_bucket_entries' LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION registry.fetch_rows(tbl text, keys text[],
                                    max_bytes integer DEFAULT NULL)
    RETURNS bytea
    AS 'MODULE_PATHNAME', 'registry_fetch_rows' LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- Named in the select list (not FROM, which would gather every page
-- before sending the first), it sends each page as soon as it is made.
CREATE FUNCTION registry.table_pages(tbl text, page_rows integer DEFAULT 10000,
                                     max_bytes integer DEFAULT NULL)
    RETURNS SETOF bytea
    AS 'MODULE_PATHNAME', 'registry_table_pages' LANGUAGE C VOLATILE PARALLEL UNSAFE ROWS 100;

-- For registry.join() on another node: every registry table's columns,
-- primary key and lease TTL (a message of kind 'T').  search_path
-- pinned: a type or function outside pg_catalog comes schema-qualified.
CREATE FUNCTION registry.table_definitions()
    RETURNS bytea
    AS 'MODULE_PATHNAME', 'registry_table_definitions' LANGUAGE C VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog;

-- Creates and registers here the registry tables of a peer, and adds it.
-- search_path pinned: every name it writes is schema-qualified or built in.
CREATE FUNCTION registry.join(peer text, conninfo text)
    RETURNS TABLE(table_name text, action text, detail text)
    AS 'MODULE_PATHNAME', 'registry_join' LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE
    SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION registry.decode_message(msg bytea) RETURNS jsonb
    AS 'MODULE_PATHNAME', 'registry_decode_message' LANGUAGE C STRICT STABLE PARALLEL SAFE;
COMMENT ON FUNCTION registry.decode_message(bytea) IS
    'show a message returned by a serving function as JSON';

-- ---------------------------------------------------------------------
-- Applying remote rows
-- ---------------------------------------------------------------------

CREATE FUNCTION registry.apply_row(tbl regclass, key text, version bigint,
                                   origin text, deleted boolean,
                                   "row" jsonb DEFAULT NULL)
    RETURNS text
    AS 'MODULE_PATHNAME', 'registry_apply_row' LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.apply_row(regclass, text, bigint, text, boolean, jsonb) IS
    'apply one row as if received from node origin: applied or skipped';

-- ---------------------------------------------------------------------
-- Inspection
-- ---------------------------------------------------------------------

CREATE FUNCTION registry.verify(tbl regclass DEFAULT NULL)
    RETURNS TABLE (table_name text, problem text, bucket integer, key text, detail text)
    AS 'MODULE_PATHNAME', 'registry_verify' LANGUAGE C VOLATILE PARALLEL UNSAFE
    SET DateStyle = 'ISO, YMD' SET IntervalStyle = 'postgres' SET TimeZone = 'UTC'
    SET extra_float_digits = 3 SET bytea_output = 'hex' SET search_path = pg_catalog;
COMMENT ON FUNCTION registry.verify(regclass) IS
    'recompute digests from disk and report every difference (no rows: consistent)';

CREATE FUNCTION registry.versions(tbl regclass)
    RETURNS TABLE (key text, version bigint, origin text, deleted boolean)
    AS 'MODULE_PATHNAME', 'registry_versions' LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION registry.versions(regclass) IS
    'every key of a registry table with its version: rows and tombstones';

CREATE FUNCTION registry._node_info(
    OUT node_name text, OUT database text, OUT state text, OUT epoch bigint,
    OUT started_at timestamptz, OUT ready_at timestamptz,
    OUT clock bigint, OUT clock_time timestamptz, OUT clock_ready boolean,
    OUT clock_offset_ms bigint, OUT clock_lease bigint, OUT clock_lease_writes bigint,
    OUT clock_regressions bigint, OUT versions_refused bigint,
    OUT last_seq bigint, OUT first_seq bigint,
    OUT change_log_capacity integer, OUT change_log_used bigint,
    OUT change_log_overwritten bigint, OUT change_log_truncations bigint,
    OUT acceptor_capacity integer, OUT acceptors_used bigint, OUT acceptor_ops integer,
    OUT acceptor_evictions bigint, OUT acceptor_misses bigint,
    OUT table_capacity integer, OUT tables_used integer, OUT digest_buckets integer,
    OUT origin_capacity integer, OUT origins_used integer, OUT max_key_length integer,
    OUT notified_seq bigint, OUT notifications_sent bigint,
    OUT notifications_lost bigint, OUT notifications_truncated bigint,
    OUT shared_memory_bytes bigint, OUT maintenance_pid integer,
    OUT origins_reclaimed bigint, OUT origins_unknown bigint,
    OUT lease_capacity integer, OUT leases_used bigint, OUT lease_evictions bigint,
    OUT lease_grants bigint, OUT lease_renewals bigint,
    OUT lease_ownership_moves bigint, OUT lease_reregistrations bigint,
    OUT leases_expired bigint, OUT sessions_expired bigint, OUT owner_expired bigint,
    OUT expiry_held_minority bigint, OUT expiry_held_cap bigint,
    OUT expiry_minority boolean)
    AS 'MODULE_PATHNAME', 'registry_node_info' LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION registry._table_stats(
    OUT tid integer, OUT live_rows bigint, OUT tombstones bigint,
    OUT changes bigint, OUT last_change timestamptz, OUT digest_root text)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'registry_table_stats' LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION registry._acceptors(
    OUT tid integer, OUT key text, OUT version bigint, OUT origin text,
    OUT op text, OUT changes bigint, OUT last_change timestamptz, OUT history jsonb)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'registry_acceptors' LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION registry._change_log(
    OUT seq bigint, OUT tid integer, OUT key text, OUT op text,
    OUT version bigint, OUT origin text, OUT committed_at timestamptz,
    OUT reason text)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'registry_change_log' LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION registry._peer_status(
    OUT peer text, OUT remote_node text, OUT state text,
    OUT peer_epoch bigint, OUT consumed_seq bigint, OUT peer_last_seq bigint,
    OUT lag_changes bigint, OUT lag_ms bigint,
    OUT connects bigint, OUT connected_since timestamptz,
    OUT fast_batches bigint, OUT rounds bigint,
    OUT buckets_compared bigint, OUT buckets_mismatched bigint,
    OUT rows_pulled bigint, OUT bytes_pulled bigint, OUT rows_applied bigint,
    OUT rows_skipped bigint, OUT versions_refused bigint, OUT rows_refused_purged bigint,
    OUT last_success timestamptz, OUT last_converged_at timestamptz,
    OUT needs_resync boolean, OUT errors bigint,
    OUT last_error text, OUT last_error_at timestamptz, OUT bytes_sent bigint,
    OUT round_bytes bigint, OUT healthy boolean, OUT health_changed_at timestamptz,
    OUT problem text)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'registry_peer_status' LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION registry._leases(
    OUT tid integer, OUT key text, OUT granted_at timestamptz,
    OUT renewed_at timestamptz, OUT deadline timestamptz, OUT renewals bigint,
    OUT session_pid integer, OUT session_ended_at timestamptz)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'registry_leases' LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION registry._reset() RETURNS void
    AS 'MODULE_PATHNAME', 'registry_reset' LANGUAGE C PARALLEL UNSAFE;

CREATE FUNCTION registry._table_name(regclass) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    AS $$ SELECT format('%I.%I', n.nspname, c.relname)
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid = $1 $$;

CREATE VIEW registry.node AS
    SELECT * FROM registry._node_info();

CREATE VIEW registry.tables AS
    SELECT registry._table_name(r.relid) AS table_name,
           r.relid,
           r.tid,
           r.key_columns,
           r.key_types,
           coalesce(s.live_rows, 0) AS rows,
           coalesce(s.tombstones, 0) AS tombstones,
           coalesce(s.changes, 0) AS changes,
           s.last_change,
           s.digest_root,
           r.registered_at
    FROM registry.replicated_tables r
    LEFT JOIN registry._table_stats() s USING (tid);

CREATE VIEW registry.acceptors AS
    SELECT registry._table_name(r.relid) AS table_name,
           a.key, a.version, a.origin, a.op, a.changes, a.last_change, a.history
    FROM registry._acceptors() a
    LEFT JOIN registry.replicated_tables r USING (tid);

CREATE VIEW registry.peer_status AS
    SELECT p.name AS peer, s.remote_node, coalesce(s.state, 'disconnected') AS state,
           coalesce(s.healthy, false) AS healthy,
           coalesce(s.health_changed_at, p.added_at) AS health_changed_at,
           CASE WHEN s.peer IS NULL THEN 'not taken up by the sync worker yet'
                ELSE s.problem END AS problem,
           s.peer_epoch, s.consumed_seq, s.peer_last_seq, s.lag_changes, s.lag_ms,
           s.connects, s.connected_since, s.fast_batches, s.rounds,
           s.buckets_compared, s.buckets_mismatched, s.round_bytes,
           s.rows_pulled, s.bytes_pulled,
           s.bytes_sent,
           s.rows_applied, s.rows_skipped, s.versions_refused, s.rows_refused_purged,
           s.last_success, coalesce(s.last_converged_at, p.last_converged_at) AS last_converged_at,
           coalesce(s.needs_resync, false) AS needs_resync, s.errors,
           s.last_error, s.last_error_at, p.added_at
    FROM registry.peers p
    LEFT JOIN registry._peer_status() s ON s.peer = p.name;

CREATE VIEW registry.change_log AS
    SELECT l.seq, registry._table_name(r.relid) AS table_name,
           l.key, l.op, l.version, l.origin, l.committed_at,
           registry.key_values(r.relid, l.key) AS key_values, l.reason
    FROM registry._change_log() l
    LEFT JOIN registry.replicated_tables r USING (tid)
    ORDER BY l.seq;

-- The leases this node holds: rows of ephemeral tables it owns.
CREATE VIEW registry.leases AS
    SELECT registry._table_name(r.relid) AS table_name, l.key,
           current_setting('registry.node_name') AS owner,
           l.granted_at, l.renewed_at, l.deadline,
           greatest(l.deadline - now(), interval '0') AS remaining,
           l.renewals, l.session_pid, l.session_ended_at
    FROM registry._leases() l
    LEFT JOIN registry.replicated_tables r USING (tid);

-- ---------------------------------------------------------------------
-- Client APIs: a consistent listing, watching from a position, waiting
-- for peers (src/watch.c)
-- ---------------------------------------------------------------------

-- The first row is the position (epoch, seq) the listing reflects; the
-- other rows carry it too.  Reads under its own snapshot (a cut).
CREATE FUNCTION registry.list(tables regclass[] DEFAULT NULL,
                              key_prefix text DEFAULT NULL)
    RETURNS TABLE (epoch bigint, seq bigint, table_name text, key text,
                   version bigint, origin text, "row" jsonb)
    AS 'MODULE_PATHNAME', 'registry_list' LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- A procedure: outside a transaction block it commits before it waits,
-- and holds no snapshot or lock while waiting.
CREATE PROCEDURE registry.watch(INOUT epoch bigint, INOUT seq bigint,
                                OUT changes jsonb,
                                tables regclass[] DEFAULT NULL,
                                key_prefix text DEFAULT NULL,
                                max_changes integer DEFAULT 1000,
                                timeout interval DEFAULT '30 s')
    AS 'MODULE_PATHNAME', 'registry_watch' LANGUAGE C;

CREATE FUNCTION registry.wait_for_peers(n integer DEFAULT NULL,
                                        timeout interval DEFAULT '10 s')
    RETURNS integer
    AS 'MODULE_PATHNAME', 'registry_wait_for_peers' LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- ---------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------

REVOKE ALL ON ALL TABLES IN SCHEMA registry FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA registry FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA registry FROM PUBLIC;
-- Any role may look into the schema: one that is not allowed to call a
-- function then learns which role it needs (see the serving functions
-- below) instead of "permission denied for schema registry".
GRANT USAGE ON SCHEMA registry TO PUBLIC;

-- trigger functions only run as triggers; the key helpers are for
-- applications (registry.get_row reads with the caller's privileges)
GRANT EXECUTE ON FUNCTION registry.stamp(), registry.capture(),
    registry.capture_truncate(), registry.key_hash("any"),
    registry.key_values(regclass, text), registry.get_row(regclass, text)
    TO PUBLIC;

GRANT SELECT ON registry.node, registry.tables, registry.acceptors,
    registry.change_log, registry.peer_status, registry.replicated_tables,
    registry.peers, registry.leases TO registry_admin;
GRANT EXECUTE ON FUNCTION
    registry.replicate(regclass), registry.unreplicate(regclass),
    registry.hlc_now(), registry.version_time(bigint),
    registry.verify(regclass), registry.versions(regclass),
    registry.decode_message(bytea),
    registry.apply_row(regclass, text, bigint, text, boolean, jsonb),
    registry._node_info(), registry._table_stats(), registry._acceptors(),
    registry._change_log(), registry._table_name(regclass),
    registry.add_peer(text, text), registry.remove_peer(text),
    registry.sync_now(text, interval), registry.purge_tombstones(),
    registry.resync(regclass), registry._peer_status(),
    registry.set_lease(regclass, interval), registry._leases()
    TO registry_admin;
-- renew() checks that its caller may UPDATE the table
GRANT EXECUTE ON FUNCTION registry.renew(regclass, text[]) TO PUBLIC;
-- list and watch check SELECT on each table (and refuse row security);
-- wait_for_peers waits for the caller's own last change
GRANT EXECUTE ON FUNCTION registry.list(regclass[], text),
    registry.wait_for_peers(integer, interval) TO PUBLIC;
GRANT EXECUTE ON PROCEDURE
    registry.watch(bigint, bigint, jsonb, regclass[], text, integer, interval)
    TO PUBLIC;
-- decode_message is not among them: peers never need it, and decoding is
-- the one thing a message can make expensive.
-- The serving functions: to registry_peer and registry_admin, and to
-- PUBLIC too: each checks its caller first (a superuser or a member of
-- registry_peer), and tells a login role that is not a member to be
-- granted it.
GRANT EXECUTE ON FUNCTION
    registry.changes_since(bigint, integer, boolean, bigint, text, integer, integer, text[]),
    registry.digest(text, integer, integer, integer, integer),
    registry.bucket_entries(text, integer, integer[], boolean, integer, integer, integer),
    registry.fetch_rows(text, text[], integer),
    registry.table_pages(text, integer, integer)
    TO registry_peer, registry_admin, PUBLIC;

-- registry.join() is for administrators; the serving function it calls on
-- the peer is granted like the other serving functions (it checks its caller).
GRANT EXECUTE ON FUNCTION registry.join(text, text) TO registry_admin;
GRANT EXECUTE ON FUNCTION registry.table_definitions()
    TO registry_peer, registry_admin, PUBLIC;

-- A new incarnation of the extension starts from empty shared state.
SELECT registry._reset();
