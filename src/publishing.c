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
 * A cut (registry.list(), watch.c) needs more: a snapshot and a seq that
 * agree exactly, every change up to the seq in the snapshot and none
 * after it.  Across keys the log is not in the order transactions became
 * visible, so a cut holds new publishers back at pre-commit (before they
 * become visible), waits until those already past it have published,
 * and takes its snapshot and seq in between: publishing_cut_begin/end.
 * Writers are held for that long only (the commits in flight: a WAL
 * flush, typically well under a millisecond); a cut that cannot get a
 * quiet moment within its wait gives up and lets them go.
 *
 * A row written in a subtransaction carries the subtransaction's xid, so
 * the slot holds the range from the top-level xid to the highest xid of
 * its committed subtransactions (which are assigned after it).  Another
 * transaction's xid may fall inside the range; its writer then waits for
 * this publication as well, which costs microseconds and nothing else.
 *
 * Layer: a shared-state owner (layer 3) that uses the number of
 * per-process slots (util.c) and, for a cut, the change log's position
 * (changelog.c, its own layer); tombstones.c, a durable store
 * (layer 4) whose writers must wait too, calls it from above, with no
 * hook needed.
 *
 * Lock rules: none.  Each process writes only its own slot, with atomics
 * and barriers: the high end first, then the low end (a reader that sees
 * the low end sees both); the count of publishing transactions lets
 * writers skip the scan when nobody publishes.  A cut and a publisher
 * meet Dekker-style on two counters, each raising its own before it
 * reads the other's (atomic read-modify-write operations are full
 * barriers): a publisher that finds a cut afterwards steps back and
 * waits on cut_cv; a cut waits until publishing reaches 0.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/twophase.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "utils/snapmgr.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "changelog.h"
#include "publishing.h"
#include "registry.h"

typedef struct PublishingShared
{
	pg_atomic_uint32 publishing;	/* transactions between begin and end */
	pg_atomic_uint64 waits;		/* writers that had to wait */
	pg_atomic_uint32 cutting;	/* cuts in progress */
	ConditionVariable cut_cv;	/* broadcast when a cut ends */
	ConditionVariable quiet_cv; /* broadcast when the last publisher ends
								 * while a cut waits */

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
	pg_atomic_init_u32(&Publishing->cutting, 0);
	ConditionVariableInit(&Publishing->cut_cv);
	ConditionVariableInit(&Publishing->quiet_cv);
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
	for (;;)
	{
		/* a cut is being taken: not visible yet, this one waits for it */
		if (pg_atomic_read_u32(&Publishing->cutting) > 0)
		{
			ConditionVariablePrepareToSleep(&Publishing->cut_cv);
			while (pg_atomic_read_u32(&Publishing->cutting) > 0)
				(void) ConditionVariableTimedSleep(&Publishing->cut_cv, 10,
												   PG_WAIT_EXTENSION);
			ConditionVariableCancelSleep();
		}
		/* the high end first: a reader that sees the low end sees both */
		pg_atomic_write_u32(&Publishing->slots[2 * MyProc->pgprocno + 1], high);
		pg_write_barrier();
		pg_atomic_write_u32(&Publishing->slots[2 * MyProc->pgprocno], top);
		pg_atomic_fetch_add_u32(&Publishing->publishing, 1);
		publishing_set = true;
		if (pg_atomic_read_u32(&Publishing->cutting) == 0)
			break;
		/* a cut began meanwhile and may not have seen this one: step back */
		publishing_end();
	}
}

/* Once published (or aborted).  Cannot fail. */
void
publishing_end(void)
{
	if (!publishing_set)
		return;
	pg_atomic_write_u32(&Publishing->slots[2 * MyProc->pgprocno], InvalidTransactionId);
	if (pg_atomic_fetch_sub_u32(&Publishing->publishing, 1) == 1 &&
		pg_atomic_read_u32(&Publishing->cutting) > 0)
		ConditionVariableBroadcast(&Publishing->quiet_cv);
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

/* ---- cuts ---- */

static void
cut_cleanup(int code, Datum arg)
{
	pg_atomic_fetch_sub_u32(&Publishing->cutting, 1);
	ConditionVariableBroadcast(&Publishing->cut_cv);
}

/*
 * Take a cut: hold new publishers back, wait (up to wait_ms) until none
 * is between pre-commit and publication, and then take *snap (registered:
 * the caller unregisters it) and the change log's epoch and last seq.
 * Every change up to that seq is visible to the snapshot, and no change
 * after it is: its transaction was held before it became visible.
 * Returns false, with nothing taken, when publications in flight did not
 * finish within wait_ms (the caller may try again).  Publishers are let
 * go on every path out, an error or exit included.
 */
bool
publishing_cut(int wait_ms, Snapshot *snap, uint64 *epoch, uint64 *seq)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   wait_ms);
	bool		quiet = false;

	pg_atomic_fetch_add_u32(&Publishing->cutting, 1);
	PG_ENSURE_ERROR_CLEANUP(cut_cleanup, (Datum) 0);
	{
		/*
		 * Woken by the last publisher to end; the timed sleep also covers
		 * a broadcast that came between the look and the sleep.
		 */
		ConditionVariablePrepareToSleep(&Publishing->quiet_cv);
		for (;;)
		{
			long		left;

			if (pg_atomic_read_u32(&Publishing->publishing) == 0)
			{
				quiet = true;
				break;
			}
			left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
			if (left <= 0)
				break;
			(void) ConditionVariableTimedSleep(&Publishing->quiet_cv,
											   Min(left, 1L),
											   PG_WAIT_EXTENSION);
		}
		ConditionVariableCancelSleep();
		if (quiet)
		{
			ChangeLogStats st;

			*snap = RegisterSnapshot(GetLatestSnapshot());
			changelog_stats(&st);
			*epoch = st.epoch;
			*seq = st.last_seq;
		}
	}
	PG_END_ENSURE_ERROR_CLEANUP(cut_cleanup, (Datum) 0);
	cut_cleanup(0, (Datum) 0);
	return quiet;
}
