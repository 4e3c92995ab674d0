/*-------------------------------------------------------------------------
 *
 * peer_status.c
 *	  Owner of the peer status array (registry.peer_status) and of the
 *	  requests that ask the sync worker for rounds.
 *
 * Shared state and its lock rules:
 *
 *	slots[]				one per peer the sync worker knows, registry.max_nodes
 *						of them.  Protected by the LWLock given at init.  The
 *						sync worker is the only writer: it takes a slot
 *						(peer_status_attach), publishes its own copy of the
 *						peer's status into it once per loop iteration
 *						(peer_status_update) and lets it go when the peer is
 *						removed (peer_status_detach), each time exclusively
 *						and without any other lock held.  Readers
 *						(the view, sync_now) copy under the lock, shared.
 *	round_gen			registry.sync_now() and registry.resync() requests,
 *	peers_changed		and changes of registry.peers: counters bumped by
 *						backends and read by the sync worker, under the
 *						spinlock (never held with the LWLock).
 *	served_cv			broadcast whenever a published status says a request
 *						was served (served_gen, served_converged or rounds
 *						moved): sync_now() sleeps on it.
 *
 * No other file sees these structures; they hold no pointers, so a copy
 * is a complete value.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "peer_status.h"

typedef struct PeerStatusSlot
{
	bool		in_use;
	PeerStatus	st;
} PeerStatusSlot;

typedef struct PeerStatusShared
{
	LWLock	   *lock;			/* slots[] */
	slock_t		mutex;			/* round_gen, peers_changed */
	uint64		round_gen;
	uint64		peers_changed;
	ConditionVariable served_cv;
	PeerStatusSlot slots[FLEXIBLE_ARRAY_MEMBER];	/* [registry_max_origins] */
} PeerStatusShared;

static PeerStatusShared *PeerShared = NULL;

Size
peer_status_shmem_size(void)
{
	return add_size(offsetof(PeerStatusShared, slots),
					mul_size(registry_max_origins, sizeof(PeerStatusSlot)));
}

void
peer_status_shmem_init(LWLock *lock)
{
	bool		found;

	PeerShared = ShmemInitStruct("registry peers", peer_status_shmem_size(), &found);
	if (found)
		return;
	memset(PeerShared, 0, peer_status_shmem_size());
	PeerShared->lock = lock;
	SpinLockInit(&PeerShared->mutex);
	ConditionVariableInit(&PeerShared->served_cv);
}

/* The slot of a peer (lock held), or -1. */
static int
find_slot(const char *name)
{
	int			i;

	for (i = 0; i < registry_max_origins; i++)
		if (PeerShared->slots[i].in_use &&
			strcmp(PeerShared->slots[i].st.name, name) == 0)
			return i;
	return -1;
}

/*
 * The sync worker takes up a peer: its slot, kept from an earlier
 * incarnation of the peer (a new conninfo, a worker restart) or a new
 * one, and a copy of what it holds.  -1 if no slot is free.
 */
int
peer_status_attach(const char *name, PeerStatus *copy)
{
	int			slot;

	LWLockAcquire(PeerShared->lock, LW_EXCLUSIVE);
	slot = find_slot(name);
	if (slot < 0)
	{
		int			i;

		for (i = 0; i < registry_max_origins && slot < 0; i++)
			if (!PeerShared->slots[i].in_use)
				slot = i;
		if (slot >= 0)
		{
			PeerStatusSlot *s = &PeerShared->slots[slot];

			memset(s, 0, sizeof(PeerStatusSlot));
			s->in_use = true;
			strlcpy(s->st.name, name, sizeof(s->st.name));
		}
	}
	if (slot >= 0)
		*copy = PeerShared->slots[slot].st;
	LWLockRelease(PeerShared->lock);
	return slot;
}

/* Publish the sync worker's copy; wake sync_now() if it served a request. */
void
peer_status_update(int slot, const PeerStatus *copy)
{
	PeerStatus *st;
	bool		served;

	Assert(slot >= 0 && slot < registry_max_origins);
	LWLockAcquire(PeerShared->lock, LW_EXCLUSIVE);
	st = &PeerShared->slots[slot].st;
	served = st->served_gen != copy->served_gen ||
		st->served_converged != copy->served_converged ||
		st->rounds != copy->rounds;
	memcpy(st, copy, sizeof(PeerStatus));
	LWLockRelease(PeerShared->lock);
	if (served)
		ConditionVariableBroadcast(&PeerShared->served_cv);
}

void
peer_status_detach(int slot)
{
	Assert(slot >= 0 && slot < registry_max_origins);
	LWLockAcquire(PeerShared->lock, LW_EXCLUSIVE);
	PeerShared->slots[slot].in_use = false;
	LWLockRelease(PeerShared->lock);
}

const char *
peer_status_state_name(int state)
{
	switch (state)
	{
		case PEER_DISCONNECTED:
			return "disconnected";
		case PEER_CONNECTING:
			return "connecting";
		case PEER_STREAMING:
			return "streaming";
		case PEER_ANTIENTROPY:
			return "anti-entropy";
		case PEER_ERROR:
			return "error";
	}
	return "unknown";
}

/* Every peer's status, copied in one go (palloc'd); *n of them. */
PeerStatus *
peer_status_snapshot(int *n)
{
	PeerStatus *copy = palloc(sizeof(PeerStatus) * Max(registry_max_origins, 1));
	int			i;

	*n = 0;
	LWLockAcquire(PeerShared->lock, LW_SHARED);
	for (i = 0; i < registry_max_origins; i++)
		if (PeerShared->slots[i].in_use)
			copy[(*n)++] = PeerShared->slots[i].st;
	LWLockRelease(PeerShared->lock);
	return copy;
}

/* One peer's status; false if the sync worker has not taken it up. */
bool
peer_status_find(const char *name, PeerStatus *copy)
{
	int			slot;

	LWLockAcquire(PeerShared->lock, LW_SHARED);
	slot = find_slot(name);
	if (slot >= 0)
		*copy = PeerShared->slots[slot].st;
	LWLockRelease(PeerShared->lock);
	return slot >= 0;
}

/*
 * Whether node is one of this node's peers: the name it has here, or the
 * node name it reported.  (Acknowledgements are kept for peers only.)
 */
bool
peer_status_is_peer(const char *node)
{
	bool		found = false;
	int			i;

	LWLockAcquire(PeerShared->lock, LW_SHARED);
	for (i = 0; i < registry_max_origins && !found; i++)
		found = PeerShared->slots[i].in_use &&
			(strcmp(PeerShared->slots[i].st.name, node) == 0 ||
			 strcmp(PeerShared->slots[i].st.remote_node, node) == 0);
	LWLockRelease(PeerShared->lock);
	return found;
}

/*
 * Wait until every named peer served round request gen, or the deadline.
 * True if each did and each round completed.
 */
bool
peer_status_wait_served(List *names, uint64 gen, TimestampTz deadline)
{
	bool		result = false;

	ConditionVariablePrepareToSleep(&PeerShared->served_cv);
	for (;;)
	{
		ListCell   *lc;
		bool		all_done = true;
		bool		all_converged = true;
		long		left;

		LWLockAcquire(PeerShared->lock, LW_SHARED);
		foreach(lc, names)
		{
			int			slot = find_slot((char *) lfirst(lc));
			PeerStatus *p = slot >= 0 ? &PeerShared->slots[slot].st : NULL;

			if (p == NULL || p->served_gen < gen)
				all_done = false;
			else if (!p->served_converged)
				all_converged = false;
		}
		LWLockRelease(PeerShared->lock);
		if (all_done)
		{
			result = all_converged;
			break;
		}
		left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		if (left <= 0)
			break;
		(void) ConditionVariableTimedSleep(&PeerShared->served_cv, Min(left, 1000),
										   PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	ConditionVariableCancelSleep();
	return result;
}

/* Ask for a round with every peer; the request's generation. */
uint64
peer_status_request_round(void)
{
	uint64		gen;

	SpinLockAcquire(&PeerShared->mutex);
	gen = ++PeerShared->round_gen;
	SpinLockRelease(&PeerShared->mutex);
	return gen;
}

/* The latest round request. */
uint64
peer_status_round_requested(void)
{
	uint64		gen;

	SpinLockAcquire(&PeerShared->mutex);
	gen = PeerShared->round_gen;
	SpinLockRelease(&PeerShared->mutex);
	return gen;
}

void
peer_status_note_peers_changed(void)
{
	SpinLockAcquire(&PeerShared->mutex);
	PeerShared->peers_changed++;
	SpinLockRelease(&PeerShared->mutex);
}

uint64
peer_status_peers_changed(void)
{
	uint64		n;

	SpinLockAcquire(&PeerShared->mutex);
	n = PeerShared->peers_changed;
	SpinLockRelease(&PeerShared->mutex);
	return n;
}
