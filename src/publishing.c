/*-------------------------------------------------------------------------
 *
 * publishing.c
 *	  Keeping publications in commit order.
 *
 * A transaction becomes visible before its commit callback publishes it
 * (publish.c), so a later transaction could change the same key and
 * publish first.  A committing transaction therefore announces its xids
 * in a per-process slot from pre-commit until it has published
 * (publishing_begin/end), and a writer that finds a key last written by
 * such a transaction waits (microseconds) for it (publishing_wait: the
 * row triggers in capture.c, and tombstones.c for a tombstone's writer).
 * The change log is thus in commit order for every key.
 *
 * A row written in a subtransaction carries the subtransaction's xid, so
 * the slot holds the range from the top-level xid to the highest xid of
 * its committed subtransactions (which are assigned after it).  Another
 * transaction's xid may fall inside the range; its writer then waits for
 * this publication as well, which costs microseconds and nothing else.
 *
 * Layer: a shared-state owner (layer 3) that uses only the number of
 * per-process slots (util.c); tombstones.c, a durable store
 * (layer 4) whose writers must wait too, calls it from above, with no
 * hook needed.
 *
 * Lock rules: none.  Each process writes only its own slot, with atomics
 * and barriers: the high end first, then the low end (a reader that sees
 * the low end sees both); the count of publishing transactions lets
 * writers skip the scan when nobody publishes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/twophase.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "publishing.h"
#include "registry.h"

typedef struct PublishingShared
{
	pg_atomic_uint32 publishing;	/* transactions between begin and end */
	pg_atomic_uint64 waits;		/* writers that had to wait */

	/*
	 * [2 * registry_proc_slots()]: per process, the lowest and highest xid of
	 * the transaction publishing, or InvalidTransactionId
	 */
	pg_atomic_uint32 slots[FLEXIBLE_ARRAY_MEMBER];
} PublishingShared;

static PublishingShared *Publishing = NULL;

static bool publishing_set = false;

Size
publishing_shmem_size(void)
{
	return add_size(offsetof(PublishingShared, slots),
					mul_size(registry_proc_slots(), 2 * sizeof(pg_atomic_uint32)));
}

/* At shared memory startup; caller holds AddinShmemInitLock. */
void
publishing_shmem_init(void)
{
	bool		found;
	int			i;

	Publishing = ShmemInitStruct("registry publishing", publishing_shmem_size(),
								 &found);
	if (found)
		return;
	pg_atomic_init_u32(&Publishing->publishing, 0);
	pg_atomic_init_u64(&Publishing->waits, 0);
	for (i = 0; i < 2 * registry_proc_slots(); i++)
		pg_atomic_init_u32(&Publishing->slots[i], InvalidTransactionId);
}

/* At pre-commit of a transaction that has changes to publish. */
void
publishing_begin(void)
{
	TransactionId top = GetTopTransactionId();
	TransactionId high = top;
	TransactionId *children;
	int			nchildren = xactGetCommittedChildren(&children);
	int			i;

	for (i = 0; i < nchildren; i++)
		if (TransactionIdFollows(children[i], high))
			high = children[i];
	/* the high end first: a reader that sees the low end sees both */
	pg_atomic_write_u32(&Publishing->slots[2 * MyProc->pgprocno + 1], high);
	pg_write_barrier();
	pg_atomic_write_u32(&Publishing->slots[2 * MyProc->pgprocno], top);
	pg_atomic_fetch_add_u32(&Publishing->publishing, 1);
	publishing_set = true;
}

/* Once published (or aborted).  Cannot fail. */
void
publishing_end(void)
{
	if (!publishing_set)
		return;
	pg_atomic_write_u32(&Publishing->slots[2 * MyProc->pgprocno], InvalidTransactionId);
	pg_atomic_fetch_sub_u32(&Publishing->publishing, 1);
	publishing_set = false;
}

static bool
is_publishing(TransactionId xid)
{
	int			i;
	int			n = registry_proc_slots();

	for (i = 0; i < n; i++)
	{
		TransactionId low = pg_atomic_read_u32(&Publishing->slots[2 * i]);
		TransactionId high;

		if (!TransactionIdIsValid(low) || TransactionIdPrecedes(xid, low))
			continue;
		pg_read_barrier();
		high = pg_atomic_read_u32(&Publishing->slots[2 * i + 1]);
		if (TransactionIdPrecedesOrEquals(xid, high))
			return true;
	}
	return false;
}

/* Wait until the transaction that last wrote a key has published it. */
void
publishing_wait(TransactionId xid)
{
	bool		waited = false;

	if (!TransactionIdIsNormal(xid) || TransactionIdIsCurrentTransactionId(xid))
		return;
	pg_memory_barrier();
	if (pg_atomic_read_u32(&Publishing->publishing) == 0)
		return;
	while (is_publishing(xid))
	{
		waited = true;
		pg_usleep(10L);
		CHECK_FOR_INTERRUPTS();
	}
	if (waited)
		pg_atomic_fetch_add_u64(&Publishing->waits, 1);
}
