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
 * Lock order, when more than one is held: meta, acceptor, changelog,
 * digest.  Commit-time publication takes them one after another, never
 * nested.
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

/* node states, as shown by registry.node.state */
#define REG_STATE_STARTING		0	/* digests not yet rebuilt from disk */
#define REG_STATE_REBUILDING	1
#define REG_STATE_READY			2

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

/* Background workers the launcher runs; index into RegistryShared.workers */
#define REG_WORKER_MAINTENANCE	0
#define REG_WORKER_SYNC			1
#define REG_NUM_WORKERS			2

typedef struct RegWorkerSlot
{
	pid_t		pid;
	Latch	   *latch;
	TimestampTz started_at;
	uint64		starts;
	bool		idle_exit;		/* exited: the extension does not exist */
	uint64		idle_gen;		/* ... as of this extension_gen */
} RegWorkerSlot;

typedef struct RegistryShared
{
	LWLock	   *meta_lock;		/* table slots and origins */
	LWLock	   *changelog_lock;
	LWLock	   *acceptor_lock;
	LWLock	   *digest_lock;
	LWLock	   *lease_lock;		/* serialises clock lease file writes */

	uint64		epoch;			/* changes at every start */
	TimestampTz started_at;
	pg_atomic_uint32 state;		/* REG_STATE_* */
	TimestampTz ready_at;

	slock_t		mutex;			/* protects workers[] and notifier fields */
	RegWorkerSlot workers[REG_NUM_WORKERS];
	Latch	   *launcher_latch;
	uint64		extension_gen;	/* bumped when the extension is created or
								 * dropped (at commit) */

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

	/* acceptors (acceptor_lock) */
	dlist_head	acc_lru;		/* most recently changed first */
	int64		acc_used;
	uint64		acc_evictions;
	uint64		acc_misses;		/* keys that could not get an acceptor */

	/* tables and origins (meta_lock) */
	int			norigins;		/* slots ever used: names are in [0, norigins) */
	uint64		origins_reclaimed;	/* slots freed for new names */
	uint64		origins_unknown;	/* changes recorded without their origin */

	/* digests (digest_lock) */
	uint64		digest_rebuilds;

	/* committed transactions still publishing (capture.c) */
	pg_atomic_uint32 publishing;
	uint64		publication_waits;

	ConditionVariable changes_cv;	/* broadcast when changes are published */
} RegistryShared;

extern RegistryShared *RegistryState;

/* shared arrays, sized from GUCs */
extern RegTableSlot *RegistryTables;	/* [registry_max_tables] */
extern uint64 *RegistryDigests;		/* [registry_max_tables * buckets] */
extern char *RegistryOrigins;		/* [registry_max_origins][NAMEDATALEN] */
extern char *RegistryChangeLog;		/* [registry_change_log_size] entries */
extern pg_atomic_uint32 *RegistryPublishing;	/* [2 * publishing_slots()]:
												 * per process, the lowest
												 * and highest xid of the
												 * transaction publishing */

extern void registry_shmem_install_hooks(void);
extern Size registry_shmem_total_size(void);
extern void registry_reset_shared_state(void);

/* origins (shmem.c) */
#define ORIGIN_UNKNOWN	(-1)	/* no slot was free for the origin's name */
extern int16 origin_id(const char *name);
extern const char *origin_name(int16 id);
extern void origins_unpin(void);
extern int	origins_used(void);
extern Size origin_pin_bytes(void);

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

/* acceptors (acceptor.c) */
extern Size acceptor_shmem_size(void);
extern void acceptor_shmem_init(void);
extern bool acceptor_note(int32 tid, uint32 khash, const char *key,
						  RegVersion version, int16 origin, char op,
						  TimestampTz when);
extern void acceptor_reset(void);
extern void acceptor_mark_origins(bool *used);

/* ordering of publications (capture.c) */
extern int	publishing_slots(void);
extern void publishing_init(void);
extern void wait_for_publication(TransactionId xid);

/* workers (worker.c) */
extern void worker_set_latch(int which);

#endif							/* REGISTRY_SHMEM_H */
