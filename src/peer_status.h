/*-------------------------------------------------------------------------
 *
 * peer_status.h
 *	  What this node knows about its sync with each peer (shown by
 *	  registry.peer_status), and the requests that ask the sync worker for
 *	  a round (registry.sync_now, registry.resync, peer list changes).
 *
 * The shared array and its lock belong to peer_status.c; everyone else
 * works on copies (PeerStatus values) through the functions below.  The
 * sync worker is the only writer: it keeps a copy per peer, changes it as
 * it goes and publishes it with peer_status_update() once per loop
 * iteration.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_PEER_STATUS_H
#define REGISTRY_PEER_STATUS_H

#include "nodes/pg_list.h"
#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "registry.h"

/* What the sync worker is doing with a peer (registry.peer_status.state). */
#define PEER_DISCONNECTED	0
#define PEER_CONNECTING		1
#define PEER_STREAMING		2	/* fast path: following the peer's change log */
#define PEER_ANTIENTROPY	3	/* comparing digests */
#define PEER_ERROR			4	/* last attempt failed; retrying with backoff */

/* One peer's status, as a copy. */
typedef struct PeerStatus
{
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

/* shared memory (init) */
extern Size peer_status_shmem_size(void);
extern void peer_status_shmem_init(LWLock *lock);

/* the sync worker: its peers' slots */
extern int	peer_status_attach(const char *name, PeerStatus *copy);
extern void peer_status_update(int slot, const PeerStatus *copy);
extern void peer_status_detach(int slot);

/* readers */
extern const char *peer_status_state_name(int state);
extern PeerStatus *peer_status_snapshot(int *n);
extern bool peer_status_find(const char *name, PeerStatus *copy);
extern bool peer_status_is_peer(const char *node);
extern bool peer_status_wait_served(List *names, uint64 gen,
									TimestampTz deadline);

/* requests to the sync worker */
extern uint64 peer_status_request_round(void);
extern uint64 peer_status_round_requested(void);
extern void peer_status_note_peers_changed(void);
extern uint64 peer_status_peers_changed(void);

#endif							/* REGISTRY_PEER_STATUS_H */
