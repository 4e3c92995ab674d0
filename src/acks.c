/*-------------------------------------------------------------------------
 *
 * acks.c
 *	  How far each node that pulls from this one has applied this node's
 *	  change log, and waiting for it (registry.wait_for_peers()).
 *
 * A node asks registry.changes_since() for the changes after the last
 * seq it applied, naming itself (exclude_origin) and the epoch it
 * follows; serve.c notes that here as the node's acknowledgement.  No
 * message is added: the request the peer sends anyway is the ack.
 *
 * Owns AcksShared: a small array of (node name, epoch, seq), one slot per
 * node heard from, the least recently heard one reused when it is full.
 * The names are what the requests say (a peer can only speak for itself
 * when the mesh's peers have distinct roles; see docs/reference.md).
 *
 * Lock rules: the array is under its spinlock (a few name comparisons,
 * no other lock taken, nothing that can fail); waiters sleep on cv, which
 * acks_note() broadcasts when a seq advances.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "acks.h"
#include "registry.h"

#define ACKS_SLOTS	64

typedef struct AckSlot
{
	char		node[REGISTRY_NAME_LEN];	/* "" = free */
	uint64		epoch;
	uint64		seq;
	TimestampTz at;
} AckSlot;

typedef struct AcksShared
{
	slock_t		mutex;
	ConditionVariable cv;
	AckSlot		slots[ACKS_SLOTS];
} AcksShared;

static AcksShared *Acks = NULL;

Size
acks_shmem_size(void)
{
	return MAXALIGN(sizeof(AcksShared));
}

/* At shared memory startup; caller holds AddinShmemInitLock. */
void
acks_shmem_init(void)
{
	bool		found;

	Acks = ShmemInitStruct("registry acks", acks_shmem_size(), &found);
	if (found)
		return;
	memset(Acks, 0, sizeof(AcksShared));
	SpinLockInit(&Acks->mutex);
	ConditionVariableInit(&Acks->cv);
}

/*
 * Node node has applied this node's changes up to seq of epoch.  A new
 * epoch replaces the old position; within one, a position only advances.
 * Cannot fail.
 */
void
acks_note(const char *node, uint64 epoch, uint64 seq)
{
	AckSlot    *s = NULL;
	AckSlot    *oldest = NULL;
	bool		advanced = false;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	if (node == NULL || node[0] == '\0' || strlen(node) >= REGISTRY_NAME_LEN)
		return;
	SpinLockAcquire(&Acks->mutex);
	for (i = 0; i < ACKS_SLOTS; i++)
	{
		AckSlot    *a = &Acks->slots[i];

		if (strcmp(a->node, node) == 0)
		{
			s = a;
			break;
		}
		if (oldest == NULL || a->node[0] == '\0' ||
			(oldest->node[0] != '\0' && a->at < oldest->at))
			oldest = a;
	}
	if (s == NULL)
	{
		s = oldest;
		strlcpy(s->node, node, REGISTRY_NAME_LEN);
		s->epoch = 0;
		s->seq = 0;
	}
	if (s->epoch != epoch || seq > s->seq)
	{
		advanced = true;
		s->epoch = epoch;
		s->seq = seq;
	}
	s->at = now;
	SpinLockRelease(&Acks->mutex);
	if (advanced)
		ConditionVariableBroadcast(&Acks->cv);
}

static int
count_acked(uint64 epoch, uint64 seq, char **nodes, int nnodes)
{
	int			n = 0;
	int			i,
				j;

	SpinLockAcquire(&Acks->mutex);
	for (j = 0; j < nnodes; j++)
		for (i = 0; i < ACKS_SLOTS; i++)
		{
			AckSlot    *a = &Acks->slots[i];

			if (strcmp(a->node, nodes[j]) == 0)
			{
				if (a->epoch == epoch && a->seq >= seq)
					n++;
				break;
			}
		}
	SpinLockRelease(&Acks->mutex);
	return n;
}

/*
 * Wait until at least need of the nodes named have applied seq of epoch,
 * or until deadline.  Returns how many have.  Interruptible.
 */
int
acks_wait(uint64 epoch, uint64 seq, char **nodes, int nnodes, int need,
		  TimestampTz deadline)
{
	int			n;

	ConditionVariablePrepareToSleep(&Acks->cv);
	for (;;)
	{
		long		left;

		n = count_acked(epoch, seq, nodes, nnodes);
		if (n >= need)
			break;
		left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		if (left <= 0)
			break;
		(void) ConditionVariableTimedSleep(&Acks->cv, Min(left, 1000L),
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	return n;
}
