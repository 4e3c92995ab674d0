/*-------------------------------------------------------------------------
 *
 * registry.h
 *	  Declarations shared by every part of the registry extension: the GUC
 *	  variables, the version (hybrid logical clock) type, and the entry
 *	  points each source file offers to the others.
 *
 * The files are in layers, each calling only its own layer or lower ones;
 * src/README draws the map and names each file's concern and each shared
 * structure's owner.  scripts/layers checks both on the built objects.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_H
#define REGISTRY_H

#include "postgres.h"

#include "access/htup.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/parsenodes.h"
#include "nodes/pg_list.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"

/* ---- GUC variables (guc.c) ---- */
extern char *registry_node_name;
extern char *registry_database;
extern int	registry_max_tables;
extern int	registry_max_acceptors;
extern int	registry_acceptor_ops;
extern int	registry_change_log_size;
extern int	registry_digest_buckets;
extern int	registry_max_key_length;
extern int	registry_max_origins;
extern int	registry_max_clock_skew_ms;
extern int	registry_compress_threshold;
/* registry.pull_compression */
typedef enum
{
	REGISTRY_PULL_COMPRESSION_AUTO,
	REGISTRY_PULL_COMPRESSION_ON,
	REGISTRY_PULL_COMPRESSION_OFF
} RegistryPullCompression;
extern int	registry_pull_compression;
extern bool registry_notifications;
extern int	registry_notify_delay_ms;
extern int	registry_sync_interval_ms;
extern int	registry_antientropy_interval_ms;
extern int	registry_batch_size;
extern int	registry_connect_timeout_ms;
extern int	registry_query_timeout_ms;
extern int	registry_tombstone_retention_s;
extern int	registry_max_message_size;
extern int	registry_max_leases;
extern int	registry_owner_timeout_ms;
extern int	registry_expiry_interval_ms;
extern int	registry_expiry_cap;
extern int	registry_expiry_window_ms;
extern bool registry_lease_session;

/* true when loaded through shared_preload_libraries */
extern bool registry_preloaded;

extern void guc_define(void);

/* Name of the extension's schema; fixed (the extension is not relocatable). */
#define REGISTRY_SCHEMA "registry"

/*
 * Size limits that shape shared memory entries.  REGISTRY_MAX_KEY_LEN is
 * also the upper bound of registry.max_key_length (guc.c); every buffer
 * that holds any key is REGISTRY_MAX_KEY_BUF bytes.
 */
#define REGISTRY_NAME_LEN	NAMEDATALEN /* node names, incl. terminator */
#define REGISTRY_MAX_KEY_LEN 4096	/* longest possible key text */
#define REGISTRY_MAX_KEY_BUF (REGISTRY_MAX_KEY_LEN + 1)	/* ... and terminator */

/* ---- versions ----
 *
 * A version is a hybrid logical clock stamp: milliseconds since the Unix
 * epoch in the high 48 bits, a logical counter in the low 16 bits.  Two
 * versions are ordered by the stamp, then by the origin node's name.
 */
typedef uint64 RegVersion;

/*
 * Last writer wins: the higher version, and between equal versions the
 * origin node name that sorts higher (bytewise), on every node alike.
 */
static inline bool
version_greater(RegVersion v1, const char *o1, RegVersion v2, const char *o2)
{
	if (v1 != v2)
		return v1 > v2;
	return strcmp(o1, o2) > 0;
}

#define HLC_LOGICAL_BITS	16
#define HLC_LOGICAL_MASK	((UINT64CONST(1) << HLC_LOGICAL_BITS) - 1)
#define HLC_PHYS(v)			((v) >> HLC_LOGICAL_BITS)
#define HLC_MAKE(ms, l)		(((uint64) (ms) << HLC_LOGICAL_BITS) | (uint64) (l))

/* Operation codes, stored in the change log and the acceptors. */
#define REG_OP_INSERT	'i'
#define REG_OP_UPDATE	'u'
#define REG_OP_DELETE	'd'
#define REG_OP_RESYNC	'r'		/* bulk change: compare the table's digests */

/*
 * Why a change was made, where it is not a client's write: kept in the
 * change log beside the op (0: no reason given), shown by
 * registry.change_log and the notifications.  Never sent to peers.
 */
#define LEASE_REASON_LEASE		'l' /* the lease ran out on its owner */
#define LEASE_REASON_SESSION	's' /* the session it was bound to ended */
#define LEASE_REASON_OWNER		'o' /* its owner was out of reach too long */

static inline const char *
registry_expiry_name(char reason)
{
	switch (reason)
	{
		case LEASE_REASON_LEASE:
			return "lease";
		case LEASE_REASON_SESSION:
			return "session";
		case LEASE_REASON_OWNER:
			return "owner";
	}
	return NULL;
}

static inline const char *
registry_op_name(char op)
{
	switch (op)
	{
		case REG_OP_INSERT:
			return "insert";
		case REG_OP_UPDATE:
			return "update";
		case REG_OP_DELETE:
			return "delete";
		case REG_OP_RESYNC:
			return "resync";
	}
	return "unknown";
}

/* ---- client_flush.c ---- */
extern void registry_flush_client(void);
extern bool registry_client_watchable(void);
extern bool registry_client_wait(long timeout_ms, uint32 wait_event_info);

/* ---- util.c ---- */

/* true once the shared memory startup hook has initialised every owner */
extern bool registry_shmem_attached;

extern int	registry_proc_slots(void);
extern Oid	registry_relid(const char *relname);

/*
 * The extension's relations that the row triggers open, by number: their
 * OIDs without a look by name (registry_own_relid).  In the order of
 * util.c's own_relids.
 */
typedef enum RegistryOwnRel
{
	REGISTRY_REL_TOMBSTONES,
	REGISTRY_REL_TOMBSTONES_PKEY,
	REGISTRY_REL_ROW_KEYS,
	REGISTRY_REL_ROW_KEYS_PKEY,
	REGISTRY_REL_LEASE_STASH,
	REGISTRY_REL_LEASE_STASH_PKEY
} RegistryOwnRel;

extern Oid	registry_own_relid(RegistryOwnRel rel);
extern void registry_check_preloaded(void);
extern void registry_check_admin(void);
extern void registry_check_peer(void);
extern void registry_check_table_privilege(Oid relid, AclMode mode,
										   const char *what);
extern void registry_check_not_null(FunctionCallInfo fcinfo, int argno, const char *argname);

/*
 * The identity to go back to after running as another role: as the owner
 * of schema registry on the extension's own tables (registry_owner_*), or
 * as a table's owner while its rows are applied (apply_as_owner_*).
 */
typedef struct RegistryOwnerSave
{
	Oid			userid;
	int			sec_context;
	int			guc_nest;
} RegistryOwnerSave;

extern void registry_become(Oid role, int sec_flags, RegistryOwnerSave *save);
extern void registry_unbecome(const RegistryOwnerSave *save);
extern void registry_owner_begin(RegistryOwnerSave *save);
extern void registry_owner_end(const RegistryOwnerSave *save);

/*
 * Node names appear in JSON payloads, in peers' views and in log lines;
 * keeping them to a conservative alphabet (1..63 bytes of
 * [A-Za-z0-9_.:@-]) means they never need quoting.
 */
static inline bool
registry_valid_node_name(const char *name)
{
	const char *p;

	if (name == NULL || name[0] == '\0' || strlen(name) >= REGISTRY_NAME_LEN)
		return false;
	for (p = name; *p; p++)
	{
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || *p == '_' || *p == '-' ||
			  *p == '.' || *p == ':' || *p == '@'))
			return false;
	}
	return true;
}

/* ---- hlc.c ---- */
struct LWLock;
extern Size hlc_shmem_size(void);
extern void hlc_shmem_init(struct LWLock *lease_lock);
extern RegVersion hlc_now(void);
extern RegVersion hlc_current(void);
extern bool hlc_update(RegVersion remote, RegVersion *max_allowed);
extern void hlc_observe_stored(RegVersion stored);
extern int64 hlc_clock_offset_ms(void);
extern RegVersion hlc_lease(void);
extern RegVersion hlc_max_acceptable(void);
extern void hlc_counters(uint64 *lease_writes, uint64 *regressions,
						 uint64 *refused, bool *ready);

/* ---- keys.c ---- */

/* How one primary-key column is turned into canonical text. */
typedef struct KeyColumn
{
	AttrNumber	attnum;
	Oid			typid;			/* base type */
	int32		typmod;
	Oid			collation;
	int			kind;			/* KeyEncKind */
	Oid			outfunc;
	Oid			infunc;
	Oid			ioparam;
	Oid			eqproc;			/* equality function of the key's opclass */
	FmgrInfo	outinfo;
	char	   *name;
} KeyColumn;

extern bool keys_output_is_canonical(Oid typid);
extern bool keys_input_is_canonical(KeyColumn *col);
extern void keys_prepare_column(Relation rel, Relation pkindex, int i,
								KeyColumn *col, bool check_only);
extern char *keys_encode(KeyColumn *cols, int ncols, Datum *values,
						 bool *isnull, const char *relname);
extern List *keys_split(const char *key, int ncols);
extern List *keys_split_extended(const char *key, int ncols, bool missing_ok);
extern uint32 keys_hash(const char *key, int len);
extern uint64 keys_hash_bytes64(const void *data, size_t len, uint64 seed);
extern void keys_canonical_gucs_push(int *nestlevel);
extern void keys_canonical_gucs_pop(int nestlevel);
extern void keys_canonical_gucs_set_session(void);

/* ---- catalog.c (layer 5: the catalog cache) ---- */

/* A column transmitted between nodes (all but dropped and generated ones). */
typedef struct RowColumn
{
	AttrNumber	attnum;
	char	   *name;
	char	   *typname;		/* format_type() without modifier */
	Oid			typid;
	int32		typmod;
	Oid			infunc;
	Oid			ioparam;
	FmgrInfo	outinfo;
	bool		identity_always;	/* GENERATED ALWAYS AS IDENTITY: set only
									 * by INSERT (OVERRIDING SYSTEM VALUE) */
} RowColumn;

/* What a backend knows about one registered table. */
typedef struct RegTable
{
	Oid			relid;			/* hash key */
	bool		valid;
	int32		tid;			/* registry-local table id */
	char	   *qualname;		/* quoted schema.table, the wire name */
	Oid			pkindex;
	int			nkeys;
	KeyColumn  *keys;
	int			ncols;
	RowColumn  *cols;
	bool		has_identity_always;	/* needs OVERRIDING SYSTEM VALUE */
	AttrNumber	verattnum;		/* registry_version column */
	AttrNumber	orgattnum;		/* registry_origin column */
	bool		khash_deferred; /* keys not in registry.row_keys (a pull) */
	bool		restored;		/* loaded from a dump, not taken up yet */
	RegVersion	purge_horizon;	/* newest purged tombstone's version */
	int64		lease_ttl_ms;	/* ephemeral: rows' time to live; 0 =
								 * persistent */
	bool		needs_canonical;	/* values or keys depend on settings */
	uint64		generation;		/* changes each time the entry is rebuilt */
	int			slot;			/* shared-memory table slot, -1 if unknown */
} RegTable;

/* One registration, as listed by regtable_all(). */
typedef struct RegTid
{
	int32		tid;
	Oid			relid;
	bool		restored;		/* loaded from a dump, not taken up yet */
	bool		khash_deferred; /* keys not in registry.row_keys (a pull) */
	int64		lease_ttl_ms;	/* ephemeral: rows' time to live; 0 =
								 * persistent */
} RegTid;

extern RegTable *regtable_by_relid(Oid relid, bool missing_ok);
extern RegTable *regtable_by_name(const char *qualname, bool missing_ok);
extern RegTable *regtable_by_tid(int32 tid, bool missing_ok);
extern List *regtable_all(void);
extern char *regtable_qualname(Oid relid);
extern char *regtable_incarnation(void);
extern void regtable_forget(Oid relid);
extern int	regtable_slot(int32 tid, Oid relid);
extern void regtable_slots_gc(void);

/* ---- tombstones.c ---- */

/* The durable version state of one key: its row's, or its tombstone's. */
typedef struct VersionState
{
	bool		exists;			/* a live row or a tombstone exists */
	RegVersion	version;
	char		origin[REGISTRY_NAME_LEN];
	bool		deleted;
} VersionState;

/* a key hash as the int4 stored in tables (and sent), order kept */
static inline int32
khash_to_int4(uint32 h)
{
	return (int32) (h ^ 0x80000000U);
}

static inline uint32
int4_to_khash(int32 v)
{
	return ((uint32) v) ^ 0x80000000U;
}

/* the row triggers registry.replicate() creates (capture.c and registration.c) */
#define REGISTRY_STAMP_TRIGGER		"registry_stamp"
#define REGISTRY_CAPTURE_TRIGGER	"registry_capture"

/* the version columns registry.replicate() adds (catalog.c, registration.c) */
#define REGISTRY_VERSION_COLUMN		"registry_version"
#define REGISTRY_ORIGIN_COLUMN		"registry_origin"

/* ---- capture.c, publish.c: see capture.h, publish.h ---- */

/* ---- apply.c ---- */
typedef enum ApplyResult
{
	APPLY_APPLIED,
	APPLY_SKIPPED_OLDER,		/* the local version is newer or equal */
	APPLY_REFUSED_SKEW,			/* the version is too far in the future */
	APPLY_REFUSED_PURGED		/* unknown key, older than a purged tombstone */
} ApplyResult;

/* A peer's column list matched to a local table, with prepared statements. */
typedef struct ApplyColumns
{
	RegTable   *t;
	int			ncols;			/* columns the peer sends */
	int		   *local;			/* index into t->cols for each sent column */
	int		   *keypos;			/* sent column of each key column */
	struct _SPI_plan *upsert;
	struct _SPI_plan *delete;
	struct _SPI_plan *bulk;		/* many live rows, last writer wins */
	FmgrInfo   *infuncs;		/* each sent column's input function */
} ApplyColumns;

/* One remote row for apply_rows_bulk(). */
typedef struct ApplyRow
{
	const char *key;
	RegVersion	version;
	const char *origin;
	char	  **values;
} ApplyRow;

extern void apply_as_owner_begin(RegTable *t, RegistryOwnerSave *save);
extern void apply_as_owner_end(const RegistryOwnerSave *save);
extern void apply_prepare_session(void);
extern int	apply_begin(void);
extern void apply_end(int nest);
extern ApplyColumns *apply_map_columns(RegTable *t, int ncols, char **names,
									   char **types);
extern void apply_keep_columns(ApplyColumns *ac);
extern void apply_free_columns(ApplyColumns *ac);
extern ApplyResult apply_row(ApplyColumns *ac, const char *key,
							 RegVersion version, const char *origin,
							 bool deleted, char **values);
extern int	apply_rows_bulk(ApplyColumns *ac, ApplyRow *rows, int n,
							int *refused_skew);
extern int	apply_rows_fresh(ApplyColumns *ac, ApplyRow *rows, int n,
							 int *refused_skew);

#endif							/* REGISTRY_H */
