/*-------------------------------------------------------------------------
 *
 * digest.c
 *	  Per-table digests in shared memory, and the table slots that hold
 *	  them (layer 3: a shared-state owner; calls only layers 1-2).
 *
 * A digest is a fixed number of buckets per table (registry.digest_buckets),
 * each bucket the XOR of its entries' hashes, where an entry is (key,
 * version, origin, deleted).  XOR makes a change an O(1) update (out with
 * the old entry, in with the new) and any range of buckets a node of the
 * tree above them: the root is the XOR of all buckets.
 *
 * A key's bucket is the high bits of its 32-bit key hash, so buckets of a
 * coarser power-of-two count are unions of finer ones and two nodes with
 * different registry.digest_buckets can still compare at the coarser one.
 *
 * Shared memory: registry.max_tables slots (RegTableSlot: the table id,
 * live rows and tombstones as published, change counters) and their
 * buckets, and per bucket a bound on the table's tombstones there (see
 * "which buckets may hold tombstones" below).  No other file sees them; they are read and changed only
 * through the functions below.  Recomputing digests from disk is
 * rebuild.c's (layer 6); registry.verify() is verify.c's.
 *
 * Lock rules.  Two LWLocks, handed in by digest_shmem_init():
 *
 *	slot_lock (the registry's meta_lock, shared with the origin table):
 *		a slot's tid and relid are written under it exclusively (allocation,
 *		freeing) and searched under it shared, so that finding a slot does
 *		not contend with publication.  A slot is allocated under both locks.
 *	digest_lock: buckets and counts are read under it shared and changed
 *		under it exclusively; a slot's tid may also be read under it alone.
 *
 * Lock order: slot_lock before digest_lock.  Among the registry's locks
 * (meta, acceptor, changelog, digest) digest_lock is the last: commit-time
 * publication takes it after the change log and acceptor locks, one after
 * another, never nested.  digest_publish_begin() takes it for the commit
 * callback; nothing between it and digest_publish_end() may raise an
 * error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "port/pg_bitutils.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "digest.h"
#include "registry.h"

/* One registered table's digest slot. */
typedef struct RegTableSlot
{
	int32		tid;			/* 0 when free */
	Oid			relid;
	int64		live_rows;
	int64		tombstones;
	uint64		changes;		/* key changes published since start */
	TimestampTz last_change;
	bool		tombs_known;	/* tomb_counts bound the table's tombstones */
} RegTableSlot;


/* Counters of the digests as a whole (digest_lock). */
typedef struct DigestShared
{
	uint64		rebuilds;		/* completed rebuilds from disk */
} DigestShared;

static DigestShared *digest_shared = NULL;
static RegTableSlot *digest_slots = NULL;	/* [registry_max_tables] */
static uint64 *digest_buckets = NULL;	/* [registry_max_tables * buckets] */
static int32 *digest_tomb_counts = NULL;	/* [registry_max_tables * buckets] */
static LWLock *slot_lock = NULL;
static LWLock *digest_lock = NULL;

/* ---- hashing and bucket math ---- */

/* The hash of one digest entry; a bucket is the XOR of its entries'. */
uint64
digest_entry_hash(const char *key, RegVersion version, const char *origin,
				  bool deleted)
{
	char		buf[REGISTRY_MAX_KEY_LEN + REGISTRY_NAME_LEN + 16];
	size_t		klen = strlen(key);
	size_t		olen = strlen(origin);
	size_t		n = 0;
	int			i;

	Assert(klen <= REGISTRY_MAX_KEY_LEN && olen < REGISTRY_NAME_LEN);
	memcpy(buf, key, klen);
	n = klen;
	buf[n++] = '\0';
	for (i = 7; i >= 0; i--)
		buf[n++] = (char) ((version >> (8 * i)) & 0xFF);
	memcpy(buf + n, origin, olen);
	n += olen;
	buf[n++] = '\0';
	buf[n++] = deleted ? 1 : 0;
	return keys_hash_bytes64(buf, n, UINT64CONST(0x6469676573747631));
}

static int
digest_bucket_shift(int nbuckets)
{
	return 32 - pg_leftmost_one_pos32((uint32) nbuckets);
}

/* The bucket of key hash khash among nbuckets (a power of two). */
int
digest_bucket_of(uint32 khash, int nbuckets)
{
	if (nbuckets <= 1)
		return 0;
	return (int) (khash >> digest_bucket_shift(nbuckets));
}

/* The key-hash range [lo, hi] of bucket b among nbuckets. */
void
digest_bucket_range(int b, int nbuckets, uint32 *lo, uint32 *hi)
{
	int			shift;

	if (nbuckets <= 1)
	{
		*lo = 0;
		*hi = PG_UINT32_MAX;
		return;
	}
	shift = digest_bucket_shift(nbuckets);
	*lo = (uint32) b << shift;
	*hi = *lo | (uint32) ((((uint64) 1) << shift) - 1);
}

/* ---- shared memory ---- */

static Size
slots_size(void)
{
	return mul_size(registry_max_tables, sizeof(RegTableSlot));
}

static Size
buckets_size(void)
{
	return mul_size(mul_size(registry_max_tables, registry_digest_buckets),
					sizeof(uint64));
}

static Size
tomb_counts_size(void)
{
	return mul_size(mul_size(registry_max_tables, registry_digest_buckets),
					sizeof(int32));
}

Size
digest_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(DigestShared));

	size = add_size(size, MAXALIGN(slots_size()));
	size = add_size(size, MAXALIGN(buckets_size()));
	size = add_size(size, MAXALIGN(tomb_counts_size()));
	return size;
}

/*
 * Attach to (and, the first time, zero) the slots and buckets.  Called in
 * the shmem startup hook, holding AddinShmemInitLock, with the two locks
 * of the rules above.
 */
void
digest_shmem_init(LWLock *slots_lock, LWLock *buckets_lock)
{
	bool		found;
	bool		found_any;

	slot_lock = slots_lock;
	digest_lock = buckets_lock;
	digest_shared = ShmemInitStruct("registry digest counters",
									sizeof(DigestShared), &found);
	found_any = found;
	digest_slots = ShmemInitStruct("registry tables", slots_size(), &found);
	digest_buckets = ShmemInitStruct("registry digests", buckets_size(), &found);
	digest_tomb_counts = ShmemInitStruct("registry tombstone counts",
										 tomb_counts_size(), &found);
	if (!found_any)
	{
		memset(digest_shared, 0, sizeof(DigestShared));
		memset(digest_slots, 0, slots_size());
		memset(digest_buckets, 0, buckets_size());
		memset(digest_tomb_counts, 0, tomb_counts_size());
	}
}

/*
 * Forget every slot and digest (CREATE EXTENSION starts from nothing).
 * Takes slot_lock, then digest_lock.
 */
void
digest_clear_all(void)
{
	LWLockAcquire(slot_lock, LW_EXCLUSIVE);
	LWLockAcquire(digest_lock, LW_EXCLUSIVE);
	memset(digest_slots, 0, slots_size());
	memset(digest_buckets, 0, buckets_size());
	memset(digest_tomb_counts, 0, tomb_counts_size());
	LWLockRelease(digest_lock);
	LWLockRelease(slot_lock);
}

/* ---- table slots ---- */

static uint64 *
slot_buckets(int slot)
{
	return digest_buckets + (Size) slot * registry_digest_buckets;
}

static int32 *
slot_tomb_counts(int slot)
{
	return digest_tomb_counts + (Size) slot * registry_digest_buckets;
}

/* Slot of tid, or -1.  Caller holds slot_lock or digest_lock. */
static int
slot_search(int32 tid)
{
	int			i;

	for (i = 0; i < registry_max_tables; i++)
		if (digest_slots[i].tid == tid)
			return i;
	return -1;
}

/* Caller holds digest_lock exclusively (and slot_lock, if tid changes). */
static void
slot_clear(int slot, int32 tid, Oid relid)
{
	RegTableSlot *ts = &digest_slots[slot];

	memset(slot_buckets(slot), 0, sizeof(uint64) * registry_digest_buckets);
	memset(slot_tomb_counts(slot), 0, sizeof(int32) * registry_digest_buckets);
	ts->tid = tid;
	ts->relid = relid;
	ts->live_rows = 0;
	ts->tombstones = 0;
	ts->changes = 0;
	ts->last_change = 0;
	ts->tombs_known = false;
}

/* The slot of table tid, or -1 if it has none. */
static int
slot_find(int32 tid)
{
	int			slot;

	LWLockAcquire(slot_lock, LW_SHARED);
	slot = slot_search(tid);
	LWLockRelease(slot_lock);
	return slot;
}

/*
 * The slot of table tid, allocated (empty) if it has none; -1 if all
 * registry.max_tables slots are in use (the caller may free the slots of
 * unregistered tables, digest_slots_gc, and ask again).
 */
int
digest_slot_alloc(int32 tid, Oid relid)
{
	int			slot;

	slot = slot_find(tid);
	if (slot >= 0)
		return slot;

	LWLockAcquire(slot_lock, LW_EXCLUSIVE);
	slot = slot_search(tid);
	if (slot < 0)
	{
		slot = slot_search(0);
		if (slot >= 0)
		{
			LWLockAcquire(digest_lock, LW_EXCLUSIVE);
			slot_clear(slot, tid, relid);
			LWLockRelease(digest_lock);
		}
	}
	LWLockRelease(slot_lock);
	return slot;
}

/* Free the slots of every table not among keep[0 .. nkeep-1]. */
void
digest_slots_gc(const int32 *keep, int nkeep)
{
	int			i;

	LWLockAcquire(slot_lock, LW_EXCLUSIVE);
	LWLockAcquire(digest_lock, LW_EXCLUSIVE);
	for (i = 0; i < registry_max_tables; i++)
	{
		bool		kept = false;
		int			j;

		if (digest_slots[i].tid == 0)
			continue;
		for (j = 0; j < nkeep; j++)
		{
			if (keep[j] == digest_slots[i].tid)
				kept = true;
		}
		if (!kept)
			slot_clear(i, 0, InvalidOid);
	}
	LWLockRelease(digest_lock);
	LWLockRelease(slot_lock);
}

/* Empty the digests and counts of slot (of table tid), as for a new table. */
void
digest_slot_clear(int slot, int32 tid, Oid relid)
{
	LWLockAcquire(digest_lock, LW_EXCLUSIVE);
	slot_clear(slot, tid, relid);
	LWLockRelease(digest_lock);
}

/* Number of slots in use. */
int
digest_tables_used(void)
{
	int			n = 0;
	int			i;

	LWLockAcquire(slot_lock, LW_SHARED);
	for (i = 0; i < registry_max_tables; i++)
		if (digest_slots[i].tid != 0)
			n++;
	LWLockRelease(slot_lock);
	return n;
}

/* ---- reading ---- */

/*
 * Table tid's digests, folded into nbuckets (a power of two no larger than
 * registry.digest_buckets) and written to out[0 .. nbuckets-1], with its
 * live rows and tombstones as published; all read at one instant.  False,
 * with out zeroed and the counts 0, if the table has no slot.
 */
bool
digest_read_table(int32 tid, int nbuckets, uint64 *out, int64 *live,
				  int64 *tombstones)
{
	int			ours = registry_digest_buckets;
	int			slot;
	int			i;

	Assert(nbuckets > 0 && nbuckets <= ours && ours % nbuckets == 0);
	memset(out, 0, sizeof(uint64) * nbuckets);
	*live = 0;
	*tombstones = 0;
	LWLockAcquire(digest_lock, LW_SHARED);
	slot = slot_search(tid);
	if (slot >= 0)
	{
		uint64	   *b = slot_buckets(slot);

		if (nbuckets == ours)
			memcpy(out, b, sizeof(uint64) * ours);
		else
		{
			for (i = 0; i < ours; i++)
				out[i / (ours / nbuckets)] ^= b[i];
		}
		*live = digest_slots[slot].live_rows;
		*tombstones = digest_slots[slot].tombstones;
	}
	LWLockRelease(digest_lock);
	return slot >= 0;
}

/* A table's live rows and tombstones, as published; false if it has no slot. */
bool
digest_table_counts(int32 tid, int64 *live, int64 *tombstones)
{
	int			slot;

	LWLockAcquire(digest_lock, LW_SHARED);
	slot = slot_search(tid);
	if (slot >= 0)
	{
		*live = digest_slots[slot].live_rows;
		*tombstones = digest_slots[slot].tombstones;
	}
	LWLockRelease(digest_lock);
	return slot >= 0;
}

/*
 * Every table with a slot, into out (registry.max_tables entries): counts,
 * and the root of its digest.  Returns how many were filled.
 */
int
digest_stats(DigestTableStats *out)
{
	int			nb = registry_digest_buckets;
	int			n = 0;
	int			i;

	LWLockAcquire(digest_lock, LW_SHARED);
	for (i = 0; i < registry_max_tables; i++)
	{
		RegTableSlot *ts = &digest_slots[i];
		uint64	   *b = slot_buckets(i);
		DigestTableStats *o;
		int			j;

		if (ts->tid == 0)
			continue;
		o = &out[n++];
		o->tid = ts->tid;
		o->live_rows = ts->live_rows;
		o->tombstones = ts->tombstones;
		o->changes = ts->changes;
		o->last_change = ts->last_change;
		o->root = 0;
		for (j = 0; j < nb; j++)
			o->root ^= b[j];
	}
	LWLockRelease(digest_lock);
	return n;
}

/* ---- changing ----
 *
 * Commit-time publication: digest_publish_begin(), then one call per
 * change, then digest_publish_end().  The calls in between raise no error;
 * a change whose slot is -1 or now belongs to another table (unregistered
 * meanwhile) is dropped.
 */

void
digest_publish_begin(void)
{
	LWLockAcquire(digest_lock, LW_EXCLUSIVE);
}

void
digest_publish_end(void)
{
	LWLockRelease(digest_lock);
}

/*
 * A committed change removed tombstones (-removed of them) from khash's
 * bucket (a purge's go through digest_publish_bulk).  A count that would go below zero was not an upper bound after
 * all: the table's counts are not trusted again until rebuilt.
 */
static void
tomb_count_removed(int slot, uint32 khash, int64 removed)
{
	int32	   *c = &slot_tomb_counts(slot)[digest_bucket_of(khash, registry_digest_buckets)];

	if (*c + removed < 0 && digest_slots[slot].tombs_known)
		digest_slots[slot].tombs_known = false;
	*c += (int32) removed;
}

static RegTableSlot *
publish_slot(int slot, int32 tid)
{
	Assert(LWLockHeldByMeInMode(digest_lock, LW_EXCLUSIVE));
	if (slot < 0 || digest_slots[slot].tid != tid)
		return NULL;
	return &digest_slots[slot];
}

/* One key's change: delta is the XOR of its old and new entries' hashes. */
void
digest_publish_key(int slot, int32 tid, uint32 khash, uint64 delta,
				   int64 live_delta, int64 tomb_delta, TimestampTz now)
{
	RegTableSlot *ts = publish_slot(slot, tid);

	if (ts == NULL)
		return;
	slot_buckets(slot)[digest_bucket_of(khash, registry_digest_buckets)] ^= delta;
	if (tomb_delta < 0)
		tomb_count_removed(slot, khash, tomb_delta);
	ts->changes++;
	ts->live_rows += live_delta;
	ts->tombstones += tomb_delta;
	ts->last_change = now;
}

/*
 * A bulk change: bucket_delta has registry.digest_buckets entries, and so
 * has tombs_purged (tombstones a purge removed per bucket) if not NULL.
 */
void
digest_publish_bulk(int slot, int32 tid, const uint64 *bucket_delta,
					int64 live_delta, int64 tomb_delta,
					const int32 *tombs_purged, TimestampTz now)
{
	RegTableSlot *ts = publish_slot(slot, tid);
	uint64	   *buckets;
	int			b;

	if (ts == NULL)
		return;
	buckets = slot_buckets(slot);
	for (b = 0; b < registry_digest_buckets; b++)
		buckets[b] ^= bucket_delta[b];
	if (tombs_purged != NULL)
	{
		int32	   *counts = slot_tomb_counts(slot);

		for (b = 0; b < registry_digest_buckets; b++)
		{
			if (counts[b] < tombs_purged[b])
				ts->tombs_known = false;
			counts[b] -= tombs_purged[b];
		}
	}
	ts->live_rows += live_delta;
	ts->tombstones += tomb_delta;
	ts->last_change = now;
}

/* The table was emptied (then changed by the deltas). */
void
digest_publish_reset(int slot, int32 tid, int64 live_delta, int64 tomb_delta,
					 TimestampTz now)
{
	RegTableSlot *ts = publish_slot(slot, tid);

	if (ts == NULL)
		return;
	memset(slot_buckets(slot), 0, sizeof(uint64) * registry_digest_buckets);
	ts->live_rows = live_delta;
	ts->tombstones = tomb_delta;
	ts->last_change = now;
}

/*
 * Add digests recomputed from disk (rebuild.c) to the tables' slots, all
 * under one hold of digest_lock, and count a completed rebuild.  A table
 * without a slot (unregistered meanwhile) is skipped.
 */
void
digest_add_rebuilt(int n, const DigestTotals *d)
{
	int			nb = registry_digest_buckets;
	int			i;

	LWLockAcquire(digest_lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		int			slot = slot_search(d[i].tid);
		uint64	   *buckets;
		int			b;

		if (slot < 0)
			continue;
		buckets = slot_buckets(slot);
		for (b = 0; b < nb; b++)
			buckets[b] ^= d[i].buckets[b];
		digest_slots[slot].live_rows += d[i].live;
		digest_slots[slot].tombstones += d[i].tombs;
		if (d[i].tomb_counts != NULL)
		{
			int32	   *counts = slot_tomb_counts(slot);
			bool		known = true;

			for (b = 0; b < nb; b++)
			{
				counts[b] += d[i].tomb_counts[b];
				if (counts[b] < 0)
					known = false;
			}
			digest_slots[slot].tombs_known = known;
		}
	}
	digest_shared->rebuilds++;
	LWLockRelease(digest_lock);
}


/* ---- which buckets may hold tombstones ----
 *
 * Per table and digest bucket, a count that is never below the number of
 * the table's tombstones in the bucket, committed or being written, so
 * that an INSERT whose key's bucket counts zero need not look for a
 * tombstone to take (capture.c).  A tombstone writer counts its tombstone
 * before writing it, holding its lock on registry.tombstones
 * (digest_tombstone_writing), and a committed change that removed one
 * uncounts it at publication (an insert of its key: tomb_delta < 0 in
 * digest_publish_key; a purge: digest_publish_bulk's tombs_purged).
 * Tombstones written by transactions that then abort, and those removed
 * otherwise (an insert in a bulk change, resync, unregistration) stay
 * counted: a count too high only costs the look.  The counts are trusted (tombs_known) only once made from disk:
 * zeroed with the digests at rebuild, under the rebuild's SHARE lock on
 * registry.tombstones that keeps every writer out for the moment, then
 * the snapshot's tombstones added (digest_add_rebuilt); or zero for a
 * table being registered (digest_tombstones_none).  A new slot, or a
 * count that would go below zero, is not trusted.  All under digest_lock.
 */

/* The slot of tid: slot if it is tid's, else searched.  Under digest_lock. */
static int
slot_of(int slot, int32 tid)
{
	if (slot >= 0 && slot < registry_max_tables && digest_slots[slot].tid == tid)
		return slot;
	return slot_search(tid);
}

/*
 * A tombstone of tid is about to be written in khash's bucket (the caller
 * holds its lock on registry.tombstones).
 */
void
digest_tombstone_writing(int32 tid, uint32 khash)
{
	int			slot;

	LWLockAcquire(digest_lock, LW_EXCLUSIVE);
	slot = slot_search(tid);
	if (slot >= 0)
		slot_tomb_counts(slot)[digest_bucket_of(khash, registry_digest_buckets)]++;
	LWLockRelease(digest_lock);
}

/*
 * Whether table tid (slot: where it was last found, or -1) may have a
 * tombstone, committed or being written, in khash's bucket.  False only
 * when its counts are trusted and the bucket's is zero.
 */
bool
digest_tombstone_possible(int slot, int32 tid, uint32 khash)
{
	bool		possible = true;

	LWLockAcquire(digest_lock, LW_SHARED);
	slot = slot_of(slot, tid);
	if (slot >= 0 && digest_slots[slot].tombs_known &&
		slot_tomb_counts(slot)[digest_bucket_of(khash, registry_digest_buckets)] == 0)
		possible = false;
	LWLockRelease(digest_lock);
	return possible;
}

/*
 * Table tid (in slot, just allocated for it) is being registered: it has
 * no tombstones, and none can be written before the registration commits.
 */
void
digest_tombstones_none(int slot, int32 tid)
{
	LWLockAcquire(digest_lock, LW_EXCLUSIVE);
	slot = slot_of(slot, tid);
	if (slot >= 0)
	{
		memset(slot_tomb_counts(slot), 0, sizeof(int32) * registry_digest_buckets);
		digest_slots[slot].tombs_known = true;
	}
	LWLockRelease(digest_lock);
}
