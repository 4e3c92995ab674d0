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

typedef struct RegistryShared
{
	LWLock	   *meta_lock;		/* origins; digest.c's slot_lock */
	LWLock	   *acceptor_lock;
	LWLock	   *digest_lock;	/* handed to digest.c */
	LWLock	   *lease_lock;		/* serialises clock lease file writes */
	LWLock	   *peer_lock;		/* peer status array */

	TimestampTz started_at;
	pg_atomic_uint32 state;		/* REG_STATE_* */
	TimestampTz ready_at;

	slock_t		mutex;			/* protects workers[] */
	RegWorkerSlot workers[REG_NUM_WORKERS];
	Latch	   *launcher_latch;
	uint64		extension_gen;	/* bumped when the extension is created or
								 * dropped (at commit) */

	/* acceptors (acceptor_lock) */
	dlist_head	acc_lru;		/* most recently changed first */
	int64		acc_used;
	uint64		acc_evictions;
	uint64		acc_misses;		/* keys that could not get an acceptor */

	/* tables and origins (meta_lock) */
	int			norigins;		/* slots ever used: names are in [0, norigins) */
	uint64		origins_reclaimed;	/* slots freed for new names */
	uint64		origins_unknown;	/* changes recorded without their origin */


	/* sync requests (mutex): registry.sync_now() and peer list changes */
	uint64		sync_request_gen;
	uint64		peers_changed;
	ConditionVariable sync_cv;	/* broadcast when a round completes */
} RegistryShared;

extern RegistryShared *RegistryState;

/* shared arrays, sized from GUCs */
extern char *RegistryOrigins;		/* [registry_max_origins][NAMEDATALEN] */
extern PeerStatus *RegistryPeers;	/* [registry_max_origins] */

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

/* table slots and digests: digest.h (TRANSITIONAL block there until
 * capture.c, serve.c, sync.c and views.c stop reaching in) */
#include "digest.h"

/* acceptors (acceptor.c) */
extern Size acceptor_shmem_size(void);
extern void acceptor_shmem_init(void);
extern bool acceptor_note(int32 tid, uint32 khash, const char *key,
						  RegVersion version, int16 origin, char op,
						  TimestampTz when);
extern void acceptor_reset(void);
extern void acceptor_mark_origins(bool *used);

/* peers (peers.c) */
extern PeerStatus *peer_status_slot(const char *name, bool create);

/* workers (worker.c) */
extern void worker_set_latch(int which);

#endif							/* REGISTRY_SHMEM_H */
