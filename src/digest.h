/*-------------------------------------------------------------------------
 *
 * digest.h
 *	  Per-table digests and table slots in shared memory (digest.c, layer
 *	  4).  The lock rules are in digest.c's opening comment.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_DIGEST_H
#define REGISTRY_DIGEST_H

#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "registry.h"

/* One table's digests and counts, as accumulated from disk (rebuild.c). */
typedef struct DigestTotals
{
	int32		tid;
	uint64	   *buckets;		/* [registry_digest_buckets] */
	int64		live;
	int64		tombs;
	int64		unversioned;	/* rows without a version: only counted */
	int32	   *tomb_counts;	/* [registry_digest_buckets] or NULL */
} DigestTotals;

/* One slot as shown by registry._table_stats(). */
typedef struct DigestTableStats
{
	int32		tid;
	int64		live_rows;
	int64		tombstones;
	uint64		changes;
	TimestampTz last_change;
	uint64		root;			/* XOR of all buckets */
} DigestTableStats;

/* hashing and bucket math */
extern uint64 digest_entry_hash(const char *key, RegVersion version,
								const char *origin, bool deleted);
extern int	digest_bucket_of(uint32 khash, int nbuckets);
extern void digest_bucket_range(int b, int nbuckets, uint32 *lo, uint32 *hi);

/* shared memory */
extern Size digest_shmem_size(void);
extern void digest_shmem_init(LWLock *slots_lock, LWLock *buckets_lock);
extern void digest_clear_all(void);

/* table slots */
extern int	digest_slot_alloc(int32 tid, Oid relid);
extern void digest_slots_gc(const int32 *keep, int nkeep);
extern void digest_slot_clear(int slot, int32 tid, Oid relid);
extern int	digest_tables_used(void);

/* reading */
extern bool digest_read_table(int32 tid, int nbuckets, uint64 *out,
							  int64 *live, int64 *tombstones);
extern bool digest_table_counts(int32 tid, int64 *live, int64 *tombstones);
extern int	digest_stats(DigestTableStats *out);

/* changing: publication at commit, and digests rebuilt from disk */
extern void digest_publish_begin(void);
extern void digest_publish_key(int slot, int32 tid, uint32 khash,
							   uint64 delta, int64 live_delta,
							   int64 tomb_delta, TimestampTz now);
extern void digest_publish_bulk(int slot, int32 tid,
								const uint64 *bucket_delta, int64 live_delta,
								int64 tomb_delta, const int32 *tombs_purged,
								TimestampTz now);
extern void digest_publish_reset(int slot, int32 tid, int64 live_delta,
								 int64 tomb_delta, TimestampTz now);
extern void digest_publish_end(void);
extern void digest_add_rebuilt(int n, const DigestTotals *d);

/* which buckets may hold tombstones */
extern void digest_tombstone_writing(int32 tid, uint32 khash);
extern bool digest_tombstone_possible(int slot, int32 tid, uint32 khash);
extern void digest_tombstones_none(int slot, int32 tid);

#endif							/* REGISTRY_DIGEST_H */
