/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  Layout of the registry's shared memory.
 *
 * Everything here is a cache or an index of what is durable in tables
 * (the registered tables' version columns, registry.tombstones); after a
 * restart it starts empty, with a new
 * epoch, and the maintenance worker rebuilds the digests from disk.  All
 * sizes are fixed at server start by the registry.* parameters.
 *
 * This header is the layout: the named LWLock tranche and who gets which
 * lock, the total size, the initialisation of every owner at server start
 * (shmem.c), and the reset at CREATE EXTENSION.  Each shared structure is
 * defined, initialised and locked by its owner, whose opening comment has
 * its lock rules: node.c (epoch and state), origins.c, acceptor.c, hlc.c,
 * worker_slots.c.  The structures still defined below are the change log,
 * table slots and digests, peer status and publication order, whose
 * owners (changelog.c, digest.c, peer status, publishing) take them over.
 *
 * Lock order, when more than one is held: meta, acceptor, changelog,
 * digest.  Commit-time publication takes them one after another, never
 * nested.  meta_lock guards the origin names (origins.c) and the table
 * slots (digest.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_SHMEM_H
#define REGISTRY_SHMEM_H

#include "lib/ilist.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

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
} RegTableSlot;

/* One committed change, as kept in the change log ring. */
typedef struct ChangeLogEntry
{
	uint64		seq;
	RegVersion	version;
	TimestampTz committed_at;
	int32		tid;
	uint32		khash;
	int16		origin;			/* index into the origin table */
	char		op;
	uint16		keylen;
	char		key[FLEXIBLE_ARRAY_MEMBER];	/* NUL-terminated */
} ChangeLogEntry;

/* What this node knows about its sync with one peer (registry.peer_status). */
#define PEER_DISCONNECTED	0
#define PEER_CONNECTING		1
#define PEER_STREAMING		2	/* fast path: following the peer's change log */
#define PEER_ANTIENTROPY	3	/* comparing digests */
#define PEER_ERROR			4	/* last attempt failed; retrying with backoff */

typedef struct PeerStatus
{
	bool		in_use;
	char		name[REGISTRY_NAME_LEN];
	char		remote_node[REGISTRY_NAME_LEN];	/* node_name it reports */
	int			state;
	uint64		peer_epoch;
	uint64		consumed_seq;	/* last seq of the peer's log applied here */
	uint64		peer_last_seq;	/* the peer's last seq, as last seen */
	TimestampTz caught_up_at;	/* last time consumed_seq reached it */
	uint64		connects;
	TimestampTz connected_since;
	uint64		fast_batches;
	uint64		rounds;			/* anti-entropy rounds completed */
	int64		round_buckets_compared; /* in the last round */
	int64		round_buckets_mismatched;
	uint64		rows_pulled;
	uint64		bytes_pulled;	/* answers, as received (compressed) */
	uint64		bytes_sent;		/* requests: statement text and parameters */
	uint64		round_bytes;	/* sent and received by the last round */
	uint64		rows_applied;
	uint64		rows_skipped;	/* not newer than ours */
	uint64		versions_refused;	/* too far in the future */
	uint64		rows_refused_purged;	/* older than a purged tombstone */
	TimestampTz last_success;
	TimestampTz last_converged_at;
	uint64		errors;
	TimestampTz last_error_at;
	char		last_error[256];
	bool		needs_resync;
	uint64		served_gen;		/* sync_now request served by the last round */
	bool		served_converged;

	/*
	 * Health, the one signal to alert on: healthy once a round ended
	 * complete; unhealthy at the first error since, or at a round that did
	 * not.  problem says why (empty when healthy).
	 */
	bool		healthy;
	TimestampTz health_changed_at;
	char		problem[256];
} PeerStatus;

/* The named LWLock tranche "registry": who gets which */
#define REGISTRY_LOCK_META		0	/* origins.c; table slots (digest.c) */
#define REGISTRY_LOCK_CHANGELOG 1
#define REGISTRY_LOCK_ACCEPTOR	2	/* acceptor.c */
#define REGISTRY_LOCK_DIGEST	3
#define REGISTRY_LOCK_LEASE		4	/* hlc.c */
#define REGISTRY_LOCK_PEER		5	/* peer status array */
#define REGISTRY_LWLOCKS		6

typedef struct RegistryShared
{
	LWLock	   *meta_lock;		/* table slots and origins */
	LWLock	   *changelog_lock;
	LWLock	   *acceptor_lock;	/* acceptor.c's */
	LWLock	   *digest_lock;
	LWLock	   *lease_lock;		/* hlc.c's */
	LWLock	   *peer_lock;		/* peer status array */

	slock_t		mutex;			/* protects notifier fields and sync requests */

	/* change log (changelog_lock) */
	uint64		cl_last_seq;	/* last published seq, 0 = none yet */
	uint64		cl_first_seq;	/* oldest seq still in the ring */
	uint64		cl_overwritten; /* entries lost to wrap-around */
	uint64		cl_truncations; /* transactions too large for the ring */

	/*
	 * 1 while the maintenance worker is idle and wants a latch wake-up from
	 * the next commit; 0 while it polls on its own (under load), so that
	 * committers need not signal it each time.
	 */
	pg_atomic_uint32 notify_wanted;

	/* notifier progress (mutex) */
	uint64		notified_seq;
	uint64		notifications_sent;
	uint64		notifications_lost;
	uint64		notifications_truncated;

	/* digests (digest_lock) */
	uint64		digest_rebuilds;

	/* committed transactions still publishing (capture.c) */
	pg_atomic_uint32 publishing;
	uint64		publication_waits;

	/* sync requests (mutex): registry.sync_now() and peer list changes */
	uint64		sync_request_gen;
	uint64		peers_changed;
	ConditionVariable sync_cv;	/* broadcast when a round completes */
	ConditionVariable changes_cv;	/* broadcast when changes are published */
} RegistryShared;

extern RegistryShared *RegistryState;

/* shared arrays, sized from GUCs */
extern RegTableSlot *RegistryTables;	/* [registry_max_tables] */
extern uint64 *RegistryDigests;		/* [registry_max_tables * buckets] */
extern char *RegistryChangeLog;		/* [registry_change_log_size] entries */
extern PeerStatus *RegistryPeers;	/* [registry_max_origins] */
extern pg_atomic_uint32 *RegistryPublishing;	/* [2 * publishing_slots()]:
												 * per process, the lowest
												 * and highest xid of the
												 * transaction publishing */

/* layout (shmem.c) */
extern Size registry_shmem_total_size(void);
extern void registry_shmem_request(void);
extern void registry_shmem_startup(void);
extern void registry_reset_shared_state(void);

/* table slots (digest.c) */
extern int	table_slot_for(int32 tid, Oid relid);
extern int	table_slot_find(int32 tid);
extern uint64 *table_slot_buckets(int slot);
extern void table_slots_gc(void);

/* change log (changelog.c) */
extern Size changelog_entry_size(void);
extern ChangeLogEntry *changelog_entry(uint64 seq);
extern void changelog_init(void);
extern void changelog_mark_origins(bool *used);

/* ordering of publications (capture.c) */
extern int	publishing_slots(void);
extern void publishing_init(void);
extern void wait_for_publication(TransactionId xid);

/* peers (peers.c) */
extern PeerStatus *peer_status_slot(const char *name, bool create);

#endif							/* REGISTRY_SHMEM_H */
