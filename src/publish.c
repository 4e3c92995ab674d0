/*-------------------------------------------------------------------------
 *
 * publish.c
 *	  A transaction's changes to registry tables, kept from the row
 *	  triggers (capture.c) and the apply path until the transaction
 *	  commits, and published to shared memory then (and only then): the
 *	  change log (changelog.c), the acceptors (acceptor.c) and the table
 *	  digests.  Also the capture modes (publish.h) that tell the triggers
 *	  how to treat the writes of the registry's own statements.
 *
 * Savepoint rollbacks drop their part of the pending list; an aborted
 * transaction drops all of it.  At pre-commit the list is coalesced (one
 * entry per key per transaction) and everything the publication needs is
 * computed, so that the commit callback itself only copies into shared
 * memory: it cannot fail.  From pre-commit until it has published, the
 * transaction is announced in publishing.c so that a later writer of the
 * same keys waits for it: the change log is in commit order for every key.
 *
 * Bulk changes (TRUNCATE, registering a table that already has rows, a
 * bulk apply, adopting a restored table) are published as one digest delta
 * per table and one "resync" entry in the change log, instead of one entry
 * per key.
 *
 * All state here is backend-local; the shared structures belong to their
 * owners, whose functions publish_commit() calls one after another,
 * never nested.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "acceptor.h"
#include "changelog.h"
#include "digest.h"
#include "leases.h"
#include "origins.h"
#include "publish.h"
#include "publishing.h"
#include "rebuild.h"
#include "registry.h"

typedef struct PendingChange
{
	SubTransactionId subid;
	bool		bulk;
	bool		reset;			/* bulk: the table's digests start over */
	bool		silent;			/* bulk: no change log entry (tombstone purge) */
	bool		merged;			/* folded into an earlier entry for its key */
	int32		tid;
	Oid			relid;
	uint32		khash;
	char	   *key;
	RegVersion	version;
	int16		origin;
	bool		deleted;
	char		reason;			/* LEASE_REASON_* of an expiry, or 0 */
	bool		old_live;		/* state before the transaction's first change */
	uint64		delta;			/* XOR of old and new entry digests */
	int64		live_delta;
	int64		tomb_delta;
	uint64	   *bucket_delta;	/* bulk: per-bucket digest deltas */
	int32	   *tombs_purged;	/* purge: tombstones gone per bucket, or NULL */
	/* computed at pre-commit */
	int			slot;
	char		op;
} PendingChange;

static PendingChange *pending = NULL;
static int	npending = 0;
static int	maxpending = 0;
static bool pending_ready = false;	/* pre-commit done */

/* lease changes of ephemeral tables, applied at commit (leases.c) */
typedef struct PendingLease
{
	SubTransactionId subid;
	LeaseChange c;
} PendingLease;

static PendingLease *pending_leases = NULL;
static int	npending_leases = 0;
static int	maxpending_leases = 0;
static LeaseChange *lease_changes = NULL;	/* computed at pre-commit */
static int	nlease_changes = 0;

/* CAPTURE_MODE_EXPIRE: the table whose DELETEs expire leases, and why */
static int32 expire_tid = 0;
static char expire_reason = 0;

/* the change log entries, computed at pre-commit */
static ChangeLogRecord *records = NULL;
static int	nrecords = 0;

/* ---- capture modes (publish.h) ---- */

/* CAPTURE_MODE_APPLY_ROW: the apply path's row being written, if any */
static bool apply_active = false;
static int32 apply_tid = 0;
static CaptureMode apply_mode;
static char apply_origin[REGISTRY_NAME_LEN];

/* a bulk change being collected (CAPTURE_MODE_BULK and the apply kinds) */
typedef struct BulkChange
{
	uint64	   *bucket_delta;
	int64		live_delta;
	int64		tomb_delta;
	/* the origin of every row, if they share one */
	char		origin[REGISTRY_NAME_LEN];
	bool		mixed;
} BulkChange;

static int32 bulk_tid = 0;		/* 0 once the bulk change ends (or drops) */
static int32 bulk_table_tid = 0;	/* the table of the last one begun */
static Oid	bulk_relid = InvalidOid;
static BulkChange bulk;
static int64 bulk_count = 0;

/*
 * CAPTURE_MODE_APPLY_BULK: the apply path writing many rows of one table
 * with their own versions: only those rows (bulk_expect, sorted by key)
 * keep theirs
 */
static int32 bulk_apply_tid = 0;
static ApplyRow **bulk_expect = NULL;
static int	bulk_nexpect = 0;

/* CAPTURE_MODE_SUPPRESS (and APPLY_FRESH): a table's DELETEs not captured */
static int32 suppressed_tid = 0;

/*
 * The subtransaction that set each of the states above: only its abort
 * drops the state.  A subtransaction that user code starts while a row is
 * applied (a plpgsql block with an EXCEPTION clause in a trigger or a
 * CHECK function) may abort without ending the apply: the row must still
 * be written with its remote version.  The states are set apart (a bulk
 * change of another table may start inside an apply), so each has its
 * own.
 */
typedef enum ModeState
{
	STATE_APPLY,				/* apply_active */
	STATE_BULK,					/* bulk_tid, bulk_apply_tid, bulk_expect */
	STATE_SUPPRESS,				/* suppressed_tid */
	STATE_EXPIRE,				/* expire_tid */
	NUM_STATES
} ModeState;

static SubTransactionId states_subid[NUM_STATES];

static void publish_xact_callback(XactEvent event, void *arg);
static void publish_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
									 SubTransactionId parentSubid, void *arg);

void
publish_init(void)
{
	RegisterXactCallback(publish_xact_callback, NULL);
	RegisterSubXactCallback(publish_subxact_callback, NULL);
}

static void
state_set(ModeState st)
{
	states_subid[st] = GetCurrentSubTransactionId();
}

static void
state_drop(ModeState st)
{
	switch (st)
	{
		case STATE_APPLY:
			apply_active = false;
			break;
		case STATE_BULK:
			bulk_tid = 0;
			bulk_apply_tid = 0;
			bulk_expect = NULL;
			bulk_nexpect = 0;
			break;
		case STATE_SUPPRESS:
			suppressed_tid = 0;
			break;
		case STATE_EXPIRE:
			expire_tid = 0;
			break;
		default:
			break;
	}
	states_subid[st] = InvalidSubTransactionId;
}

/*
 * The modes hold for one statement of ours; user code that runs inside it
 * (a trigger, a constraint) must not start another: its writes would be
 * taken for the apply's, or mix with its bulk change.
 */
static void
nested_capture_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("a registry change is already being recorded in this statement"),
			 errdetail("User code that runs while registry rows are applied, a table is truncated or registered cannot apply registry rows, truncate or register a registry table itself.")));
}

static PendingChange *
pending_append(void)
{
	PendingChange *p;

	if (npending >= maxpending)
	{
		int			newmax = maxpending ? maxpending * 2 : 16;

		if (pending == NULL)
			pending = MemoryContextAlloc(TopTransactionContext,
										 newmax * sizeof(PendingChange));
		else
			pending = repalloc_huge(pending, newmax * sizeof(PendingChange));
		maxpending = newmax;
	}
	p = &pending[npending++];
	memset(p, 0, sizeof(PendingChange));
	p->subid = GetCurrentSubTransactionId();
	p->slot = -1;
	return p;
}

static uint64
state_hash(const char *key, const VersionState *st)
{
	if (!st->exists)
		return 0;
	return digest_entry_hash(key, st->version, st->origin, st->deleted);
}

/*
 * A change of a key of an ephemeral table: this node's lease of it
 * starts again (a live row of this node's) or ends (anything else).
 */
static PendingLease *
lease_append(void)
{
	PendingLease *pl;

	if (npending_leases >= maxpending_leases)
	{
		int			newmax = maxpending_leases ? maxpending_leases * 2 : 16;

		if (pending_leases == NULL)
			pending_leases = MemoryContextAlloc(TopTransactionContext,
												newmax * sizeof(PendingLease));
		else
			pending_leases = repalloc_huge(pending_leases,
										   newmax * sizeof(PendingLease));
		maxpending_leases = newmax;
	}
	pl = &pending_leases[npending_leases++];
	memset(pl, 0, sizeof(PendingLease));
	pl->subid = GetCurrentSubTransactionId();
	return pl;
}

static void
lease_record(RegTable *t, uint32 khash, const char *key,
			 const VersionState *old, const char *origin, bool deleted)
{
	PendingLease *pl = lease_append();

	pl->c.tid = t->tid;
	pl->c.khash = khash;
	pl->c.key = MemoryContextStrdup(TopTransactionContext, key);
	pl->c.grant = !deleted && strcmp(origin, registry_node_name) == 0;
	pl->c.moved = pl->c.grant && old->exists && !old->deleted &&
		strcmp(old->origin, registry_node_name) != 0;
	pl->c.ttl_ms = t->lease_ttl_ms;
	/* only a client's session ends: a background process never does */
	pl->c.session = pl->c.grant && registry_lease_session &&
		MyBackendType == B_BACKEND;
}

/*
 * At commit, this node's leases of a whole table change: they are dropped
 * (forget: the table is persistent now, or unregistered), or the rows it
 * owns are adopted (the table became ephemeral, or its rows were
 * replaced).  For registry.set_lease(), unreplicate() and table resets.
 */
void
publish_lease_table(int32 tid, bool forget)
{
	PendingLease *pl = lease_append();

	pl->c.tid = tid;
	pl->c.key = NULL;			/* the whole table */
	pl->c.grant = !forget;
}

/* Remember one key change: old state -> (version, origin, deleted). */
void
publish_record(RegTable *t, uint32 khash, const char *key,
			   const VersionState *old, RegVersion version,
			   const char *origin, bool deleted)
{
	PendingChange *p;
	uint64		delta = state_hash(key, old) ^
		digest_entry_hash(key, version, origin, deleted);
	bool		old_live = old->exists && !old->deleted;
	int64		live_delta = (deleted ? 0 : 1) - (old_live ? 1 : 0);
	int64		tomb_delta = (deleted ? 1 : 0) - ((old->exists && old->deleted) ? 1 : 0);

	if (t->lease_ttl_ms > 0)
		lease_record(t, khash, key, old, origin, deleted);

	/*
	 * A bulk change collects its table's changes -- but during a bulk apply
	 * only the rows of the apply's statement: what user code writes
	 * meanwhile (in a subtransaction that may yet abort) is a change of
	 * its own, dropped with its subtransaction.
	 */
	if (bulk_tid == t->tid &&
		(bulk_apply_tid != t->tid || publish_mode_bulk_apply_row(key, version, origin)))
	{
		bulk.bucket_delta[digest_bucket_of(khash, registry_digest_buckets)] ^= delta;
		bulk.live_delta += live_delta;
		bulk.tomb_delta += tomb_delta;
		if (bulk_count == 0)
			strlcpy(bulk.origin, origin, sizeof(bulk.origin));
		else if (!bulk.mixed && strcmp(bulk.origin, origin) != 0)
			bulk.mixed = true;
		bulk_count++;
		return;
	}

	p = pending_append();
	p->tid = t->tid;
	p->relid = t->relid;
	p->khash = khash;
	p->key = MemoryContextStrdup(TopTransactionContext, key);
	p->version = version;
	p->origin = origins_id(origin);
	p->deleted = deleted;
	p->reason = (deleted && expire_tid == t->tid) ? expire_reason : 0;
	p->old_live = old_live;
	p->delta = delta;
	p->live_delta = live_delta;
	p->tomb_delta = tomb_delta;
}

static void
bulk_begin(RegTable *t)
{
	if (bulk_tid != 0)
		nested_capture_error();
	bulk.bucket_delta = MemoryContextAllocZero(TopTransactionContext,
											   sizeof(uint64) * registry_digest_buckets);
	bulk.live_delta = 0;
	bulk.tomb_delta = 0;
	bulk.mixed = false;
	bulk.origin[0] = '\0';
	bulk_count = 0;
	bulk_tid = t->tid;
	bulk_table_tid = t->tid;
	bulk_relid = t->relid;
	state_set(STATE_BULK);
}

/* Publish what bulk_begin() collected as one change of the table. */
static void
bulk_end(void)
{
	PendingChange *p;

	bulk_tid = 0;
	if (bulk_count == 0)
		return;
	bulk_count = 0;				/* a second end appends nothing twice */
	p = pending_append();
	p->bulk = true;
	p->tid = bulk_table_tid;
	p->relid = bulk_relid;
	p->key = "";
	p->bucket_delta = bulk.bucket_delta;
	p->live_delta = bulk.live_delta;
	p->tomb_delta = bulk.tomb_delta;

	/*
	 * Rows that all came from one node are that node's change: a peer
	 * asking for changes not its own then need not hear of it.
	 */
	p->origin = bulk.mixed ? 0 : origins_id(bulk.origin);
	p->version = hlc_current();
}

static int
apply_row_key_cmp(const void *a, const void *b)
{
	return strcmp((*(ApplyRow *const *) a)->key, (*(ApplyRow *const *) b)->key);
}

void
publish_mode_push(const CaptureMode *mode)
{
	RegTable   *t = mode->table;
	int			i;

	switch (mode->kind)
	{
		case CAPTURE_MODE_APPLY_ROW:
			if (apply_active || bulk_apply_tid != 0)
				nested_capture_error();
			apply_active = true;
			state_set(STATE_APPLY);
			apply_tid = t->tid;
			apply_mode = *mode;
			strlcpy(apply_origin, mode->origin, sizeof(apply_origin));
			apply_mode.origin = apply_origin;
			break;

		case CAPTURE_MODE_APPLY_BULK:
			if (apply_active || bulk_apply_tid != 0)
				nested_capture_error();
			bulk_expect = palloc(sizeof(ApplyRow *) * Max(mode->nrows, 1));
			for (i = 0; i < mode->nrows; i++)
				bulk_expect[i] = &mode->rows[mode->taken[i]];
			qsort(bulk_expect, mode->nrows, sizeof(ApplyRow *), apply_row_key_cmp);
			bulk_nexpect = mode->nrows;
			bulk_apply_tid = t->tid;
			bulk_begin(t);		/* the bulk state, with bulk_apply_tid */
			break;

		case CAPTURE_MODE_APPLY_FRESH:
			suppressed_tid = t->tid;
			state_set(STATE_SUPPRESS);
			bulk_begin(t);
			break;

		case CAPTURE_MODE_SUPPRESS:
			suppressed_tid = t->tid;
			state_set(STATE_SUPPRESS);
			break;

		case CAPTURE_MODE_BULK:
			bulk_begin(t);
			break;

		case CAPTURE_MODE_EXPIRE:
			expire_tid = t->tid;
			expire_reason = mode->reason;
			state_set(STATE_EXPIRE);
			break;
	}
}

void
publish_mode_pop(CaptureModeKind kind)
{
	switch (kind)
	{
		case CAPTURE_MODE_APPLY_ROW:
			apply_active = false;
			break;

		case CAPTURE_MODE_APPLY_BULK:
			bulk_apply_tid = 0;
			bulk_expect = NULL;
			bulk_nexpect = 0;
			bulk_end();
			break;

		case CAPTURE_MODE_APPLY_FRESH:
			suppressed_tid = 0;
			bulk_end();
			break;

		case CAPTURE_MODE_SUPPRESS:
			suppressed_tid = 0;
			break;

		case CAPTURE_MODE_BULK:
			bulk_end();
			break;

		case CAPTURE_MODE_EXPIRE:
			expire_tid = 0;
			break;
	}
}

/* The APPLY_ROW mode if it is active on table tid, else NULL. */
const CaptureMode *
publish_mode_applying(int32 tid)
{
	return (apply_active && apply_tid == tid) ? &apply_mode : NULL;
}

/* Whether an APPLY_BULK mode is active on table tid. */
bool
publish_mode_bulk_applying(int32 tid)
{
	return bulk_apply_tid == tid;
}

/* Whether (key, version, origin) is a row the bulk apply writes. */
bool
publish_mode_bulk_apply_row(const char *key, RegVersion version,
							const char *origin)
{
	ApplyRow	probe;
	ApplyRow   *pp = &probe;
	ApplyRow  **found;

	probe.key = key;
	found = bsearch(&pp, bulk_expect, bulk_nexpect, sizeof(ApplyRow *),
					apply_row_key_cmp);
	return found && (*found)->version == version &&
		strcmp((*found)->origin, origin) == 0;
}

/* Whether the DELETEs of table tid are not captured. */
bool
publish_mode_suppressed(int32 tid)
{
	return suppressed_tid == tid;
}

/*
 * A table restored from a dump, now whole again: its rows and tombstones
 * already carry their versions, which are kept.  The table's digests and
 * counts start again from exactly them, published as one bulk change, and
 * the clock moves past the newest version.
 */
void
publish_adopt_table(RegTable *t)
{
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	int64		unversioned;
	RegVersion	maxv;

	publish_reset_table(t);
	bulk_begin(t);
	maxv = rebuild_digest_of_table(t, snap, bulk.bucket_delta, &bulk.live_delta,
						   &bulk.tomb_delta, &unversioned);
	UnregisterSnapshot(snap);
	if (unversioned > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("restored registry table %s has " INT64_FORMAT " rows without a version",
						t->qualname, unversioned),
				 errhint("Call registry.unreplicate() and registry.replicate() on it.")));
	/* published as this node's change, whatever the rows' origins */
	bulk_count = bulk.live_delta + bulk.tomb_delta;
	bulk.mixed = true;
	bulk_end();
	hlc_observe_stored(maxv);
}

/* At commit, the table's digests and counts start from zero. */
void
publish_reset_table(RegTable *t)
{
	PendingChange *p = pending_append();

	p->bulk = true;
	p->reset = true;
	p->tid = t->tid;
	p->relid = t->relid;
	p->key = "";
	p->bucket_delta = MemoryContextAllocZero(TopTransactionContext,
											 sizeof(uint64) * registry_digest_buckets);
	p->version = hlc_current();
	/* rows of the table this node owns may have lost their leases */
	if (t->lease_ttl_ms > 0)
		publish_lease_table(t->tid, false);
}

/* Purged tombstones leave the digests without a change log entry. */
void
publish_forget_tombstones(RegTable *t, int n, uint32 *khashes, char **keys,
						  RegVersion *versions, char **origins)
{
	PendingChange *p;
	int32	   *purged;
	int			i;

	if (n == 0)
		return;
	bulk_begin(t);
	purged = MemoryContextAllocZero(TopTransactionContext,
									sizeof(int32) * registry_digest_buckets);
	for (i = 0; i < n; i++)
	{
		int			b = digest_bucket_of(khashes[i], registry_digest_buckets);

		bulk.bucket_delta[b] ^=
			digest_entry_hash(keys[i], versions[i], origins[i], true);
		bulk.tomb_delta--;
		purged[b]++;
	}
	bulk_tid = 0;
	p = pending_append();
	p->tombs_purged = purged;
	p->bulk = true;
	p->silent = true;
	p->tid = t->tid;
	p->relid = t->relid;
	p->key = "";
	p->bucket_delta = bulk.bucket_delta;
	p->tomb_delta = bulk.tomb_delta;
	p->version = hlc_current();
}

/* ---- transaction end ---- */

typedef struct CoalesceKey
{
	int32		tid;
	uint32		khash;			/* the key's hash, already computed */
	const char *key;
} CoalesceKey;

typedef struct CoalesceEntry
{
	CoalesceKey k;
	int			first;
} CoalesceEntry;

static uint32
coalesce_hash(const void *key, Size keysize)
{
	const CoalesceKey *k = key;

	return k->khash ^ (uint32) k->tid;
}

static int
coalesce_match(const void *key1, const void *key2, Size keysize)
{
	const CoalesceKey *a = key1;
	const CoalesceKey *b = key2;

	if (a->tid != b->tid || a->khash != b->khash)
		return 1;
	return strcmp(a->key, b->key);
}

/*
 * Fold repeated changes of a key into its first entry: the transaction's
 * effect is first old state -> last new state.  Not across a reset of the
 * key's table (registry.resync(), a take-up), which zeroes the table's
 * digests at its place in the list: a change after it folded into one
 * before it would be wiped with them.
 */
static void
coalesce_pending(void)
{
	HASHCTL		ctl;
	HTAB	   *h;
	int			i;

	if (npending < 2)
		return;
	ctl.keysize = sizeof(CoalesceKey);
	ctl.entrysize = sizeof(CoalesceEntry);
	ctl.hash = coalesce_hash;
	ctl.match = coalesce_match;
	ctl.hcxt = TopTransactionContext;
	h = hash_create("registry coalesce", npending, &ctl,
					HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	for (i = 0; i < npending; i++)
	{
		PendingChange *p = &pending[i];
		CoalesceKey k;
		CoalesceEntry *e;
		bool		found;

		if (p->reset)
		{
			HASH_SEQ_STATUS seq;

			/* later changes of this table's keys start afresh */
			hash_seq_init(&seq, h);
			while ((e = hash_seq_search(&seq)) != NULL)
				if (e->k.tid == p->tid)
					(void) hash_search(h, &e->k, HASH_REMOVE, NULL);
			continue;
		}
		if (p->bulk)
			continue;
		k.tid = p->tid;
		k.khash = p->khash;
		k.key = p->key;
		e = hash_search(h, &k, HASH_ENTER, &found);
		if (!found)
			e->first = i;
		else
		{
			PendingChange *f = &pending[e->first];

			f->delta ^= p->delta;
			f->live_delta += p->live_delta;
			f->tomb_delta += p->tomb_delta;
			f->version = p->version;
			f->origin = p->origin;
			f->deleted = p->deleted;
			f->reason = p->reason;
			p->merged = true;
		}
	}
	hash_destroy(h);
}

/*
 * The lease changes that survived savepoint rollbacks, as one array; and
 * the session's exit callback if a lease is to be bound to it.
 */
static void
lease_pre_commit(void)
{
	int			i;

	lease_changes = NULL;
	nlease_changes = 0;
	if (npending_leases == 0)
		return;
	lease_changes = MemoryContextAllocHuge(TopTransactionContext,
										   sizeof(LeaseChange) * npending_leases);
	for (i = 0; i < npending_leases; i++)
	{
		lease_changes[nlease_changes++] = pending_leases[i].c;
		if (pending_leases[i].c.session)
			leases_prepare_session();
	}
}

/*
 * Everything that can fail happens here, before the commit record is
 * written: coalescing, finding each table's shared-memory slot, the change
 * log entries.
 */
static void
publish_pre_commit(void)
{
	int			i;
	int			n = 0;
	int32		last_tid = 0;	/* tids start at 1 */
	int			last_slot = -1;

	coalesce_pending();

	/*
	 * One record per change the log will show; more than the ring holds
	 * and the log only counts them (a gap: changelog_append() reads no
	 * record), so none is built.  Sized by what coalescing left, never by
	 * the raw pending list, which may be far longer.
	 */
	for (i = 0; i < npending; i++)
		if (!pending[i].merged && !pending[i].silent)
			n++;
	records = NULL;
	if (n <= registry_change_log_size)
		records = MemoryContextAllocHuge(TopTransactionContext,
										 sizeof(ChangeLogRecord) * Max(n, 1));
	nrecords = 0;
	for (i = 0; i < npending; i++)
	{
		PendingChange *p = &pending[i];

		if (p->merged)
			continue;
		/* a transaction's changes come table by table: look up once per run */
		if (p->tid != last_tid)
		{
			last_slot = regtable_slot(p->tid, p->relid);
			last_tid = p->tid;
		}
		p->slot = last_slot;
		if (p->bulk)
			p->op = REG_OP_RESYNC;
		else if (p->deleted)
			p->op = REG_OP_DELETE;
		else if (p->old_live)
			p->op = REG_OP_UPDATE;
		else
			p->op = REG_OP_INSERT;
		if (!p->silent && records == NULL)
			nrecords++;
		else if (!p->silent)
		{
			ChangeLogRecord *r = &records[nrecords++];

			r->tid = p->tid;
			r->khash = p->khash;
			r->version = p->version;
			r->origin = p->origin;
			r->op = p->op;
			r->reason = p->reason;
			r->key = p->key;
		}
	}
	lease_pre_commit();
	pending_ready = true;
	publishing_begin();
}

/*
 * This session's last committed change in the change log (0: none yet):
 * what registry.wait_for_peers() waits for.
 */
static uint64 last_commit_seq = 0;
static uint64 last_commit_epoch = 0;

/* Whether the current transaction has changes to registry tables. */
bool
publish_xact_has_changes(void)
{
	return npending > 0;
}

uint64
publish_last_commit(uint64 *epoch)
{
	*epoch = last_commit_epoch;
	return last_commit_seq;
}

/*
 * Commit callback: copy the transaction's changes into shared memory.
 * Nothing here may raise an error; every size was checked before commit.
 */
static void
publish_commit(void)
{
	int			i;
	TimestampTz now = GetCurrentTransactionStopTimestamp();

	{
		uint64		epoch;
		uint64		seq = changelog_append(records, nrecords, now, &epoch);

		if (seq > 0)
		{
			last_commit_seq = seq;
			last_commit_epoch = epoch;
		}
	}

	acceptor_batch_begin();
	for (i = 0; i < npending; i++)
	{
		PendingChange *p = &pending[i];

		if (p->merged || p->bulk)
			continue;
		(void) acceptor_note(p->tid, p->khash, p->key, p->version, p->origin,
							 p->op, now);
	}
	acceptor_batch_end();

	digest_publish_begin();
	for (i = 0; i < npending; i++)
	{
		PendingChange *p = &pending[i];

		/* a slot now another table's (unregistered meanwhile) is skipped */
		if (p->merged || p->slot < 0)
			continue;
		if (p->reset)
			digest_publish_reset(p->slot, p->tid, p->live_delta,
								 p->tomb_delta, now);
		else if (p->bulk)
			digest_publish_bulk(p->slot, p->tid, p->bucket_delta,
								p->live_delta, p->tomb_delta, p->tombs_purged,
								now);
		else
			digest_publish_key(p->slot, p->tid, p->khash, p->delta,
							   p->live_delta, p->tomb_delta, now);
	}
	digest_publish_end();

	leases_apply(lease_changes, nlease_changes, now);

	/* peers waiting in registry.changes_since(), and the notifier */
	changelog_wake_readers();
}

static void
pending_reset(void)
{
	pending = NULL;
	npending = 0;
	maxpending = 0;
	pending_ready = false;
	records = NULL;
	nrecords = 0;
	pending_leases = NULL;
	npending_leases = 0;
	maxpending_leases = 0;
	lease_changes = NULL;
	nlease_changes = 0;
	expire_tid = 0;
	apply_active = false;
	bulk_tid = 0;
	bulk_apply_tid = 0;
	bulk_expect = NULL;
	bulk_nexpect = 0;
	suppressed_tid = 0;
}

static void
publish_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (npending > 0 || npending_leases > 0)
				publish_pre_commit();
			break;
		case XACT_EVENT_COMMIT:
			if ((npending > 0 || npending_leases > 0) && pending_ready)
				publish_commit();
			publishing_end();
			origins_unpin();
			pending_reset();
			break;
		case XACT_EVENT_PRE_PREPARE:
			if (npending > 0 || npending_leases > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that has modified registry tables"),
						 errdetail("Registry changes are published when they commit; a prepared transaction would commit them unseen.")));
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			publishing_end();
			origins_unpin();
			pending_reset();
			break;
		default:
			break;
	}
}

static void
publish_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	int			i;

	/* a subtransaction's entries are always the tail of the list */
	switch (event)
	{
		case SUBXACT_EVENT_COMMIT_SUB:
			for (i = npending - 1; i >= 0 && pending[i].subid == mySubid; i--)
				pending[i].subid = parentSubid;
			for (i = npending_leases - 1;
				 i >= 0 && pending_leases[i].subid == mySubid; i--)
				pending_leases[i].subid = parentSubid;
			for (i = 0; i < NUM_STATES; i++)
				if (states_subid[i] == mySubid)
					states_subid[i] = parentSubid;
			break;
		case SUBXACT_EVENT_ABORT_SUB:
			while (npending > 0 && pending[npending - 1].subid == mySubid)
				npending--;
			while (npending_leases > 0 &&
				   pending_leases[npending_leases - 1].subid == mySubid)
				npending_leases--;
			for (i = 0; i < NUM_STATES; i++)
				if (states_subid[i] == mySubid)
					state_drop((ModeState) i);
			break;
		default:
			break;
	}
}
