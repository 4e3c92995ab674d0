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
 * its lock rules: node.c (state), origins.c, acceptor.c, hlc.c,
 * worker_slots.c, changelog.c (and the epoch), digest.c, publishing.c.
 * The peer status array below moves to its owner next.
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
	LWLock	   *peer_lock;		/* peer status array */

	slock_t		mutex;			/* protects the sync requests */

	/* sync requests (mutex): registry.sync_now() and peer list changes */
	uint64		sync_request_gen;
	uint64		peers_changed;
	ConditionVariable sync_cv;	/* broadcast when a round completes */
} RegistryShared;

extern RegistryShared *RegistryState;

/* shared arrays, sized from GUCs */
extern PeerStatus *RegistryPeers;	/* [registry_max_origins] */

/* layout (shmem.c) */
extern Size registry_shmem_total_size(void);
extern void registry_shmem_request(void);
extern void registry_shmem_startup(void);
extern void registry_reset_shared_state(void);

/* peers (peers.c) */
extern PeerStatus *peer_status_slot(const char *name, bool create);

#endif							/* REGISTRY_SHMEM_H */
