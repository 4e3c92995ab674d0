/*-------------------------------------------------------------------------
 *
 * worker_slots.c
 *	  The registry's background workers as shared memory sees them (layer
 *	  4): one slot per dynamic worker (its pid and latch, when it started,
 *	  whether it left because the extension was missing), the launcher's
 *	  latch, and extension_gen, bumped when CREATE or DROP EXTENSION
 *	  commits.  Also what every worker does to start, stop and look for
 *	  the extension.
 *
 * worker.c (layer 12) has the launcher and the maintenance worker; sync.c
 * has the sync worker; any layer wakes them through worker_set_latch().
 *
 * Lock rules: everything in WorkerSlots is read and written under its
 * spinlock, held only to copy a few fields (never across a call that can
 * fail or a SetLatch, which is done after releasing it).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/xact.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "registry.h"
#include "worker_slots.h"

typedef struct RegWorkerSlot
{
	pid_t		pid;
	Latch	   *latch;
	TimestampTz started_at;
	uint64		starts;
	bool		idle_exit;		/* exited: the extension does not exist */
	uint64		idle_gen;		/* ... as of this extension_gen */
} RegWorkerSlot;

typedef struct WorkerSlotsShared
{
	slock_t		mutex;			/* protects everything below */
	RegWorkerSlot workers[REG_NUM_WORKERS];
	Latch	   *launcher_latch;
	uint64		extension_gen;	/* bumped when the extension is created or
								 * dropped (at commit) */
} WorkerSlotsShared;

static WorkerSlotsShared *WorkerSlots = NULL;

static const char *const worker_names[REG_NUM_WORKERS] = {
	"registry maintenance",
	"registry sync",
};

Size
worker_slots_shmem_size(void)
{
	return MAXALIGN(sizeof(WorkerSlotsShared));
}

/* Called by the shared memory startup hook, holding AddinShmemInitLock. */
void
worker_slots_shmem_init(void)
{
	bool		found;

	WorkerSlots = ShmemInitStruct("registry workers", sizeof(WorkerSlotsShared),
								  &found);
	if (found)
		return;
	memset(WorkerSlots, 0, sizeof(WorkerSlotsShared));
	SpinLockInit(&WorkerSlots->mutex);
}

const char *
worker_name(int which)
{
	return worker_names[which];
}

void
worker_set_latch(int which)
{
	Latch	   *latch;

	SpinLockAcquire(&WorkerSlots->mutex);
	latch = WorkerSlots->workers[which].latch;
	SpinLockRelease(&WorkerSlots->mutex);
	if (latch)
		SetLatch(latch);
}

void
worker_wake_maintenance(void)
{
	worker_set_latch(REG_WORKER_MAINTENANCE);
}

/* ---- stopping quietly ---- */

/*
 * SIGTERM: a worker outside any transaction (waiting for work, talking to
 * peers) is woken and exits at the top of its loop (worker_exit_if_asked);
 * one inside a transaction is interrupted as die() would do it, so that a
 * long rebuild or apply does not hold a shutdown up.
 */
void
worker_sigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	ShutdownRequestPending = true;
	if (IsTransactionState())
	{
		InterruptPending = true;
		ProcDiePending = true;
	}
	SetLatch(MyLatch);
	errno = save_errno;
}

/*
 * At the top of a worker's loop: stop if asked to.  code 0 for the
 * dynamic workers (not restarted, nothing logged); the launcher, a static
 * worker, exits 1 so that the postmaster starts it again after a
 * pg_terminate_backend.
 */
void
worker_exit_if_asked(int code)
{
	if (ShutdownRequestPending)
		proc_exit(code);
}

/*
 * Right after StartTransactionCommand(): a SIGTERM that came just before
 * (outside a transaction, so only noted) interrupts the transaction as one
 * during it would, rather than waiting for the work to end.
 */
void
worker_xact_started(void)
{
	if (ShutdownRequestPending)
	{
		InterruptPending = true;
		ProcDiePending = true;
	}
}

static bool extension_change_pending = false;

static void
extension_xact_callback(XactEvent event, void *arg)
{
	/*
	 * COMMIT PREPARED runs no callback in the backend that prepared, so
	 * the workers would never hear of the change (and stay in a database
	 * whose extension is gone).  Refused before anything is prepared, as
	 * postgres_fdw refuses its own.
	 */
	if (event == XACT_EVENT_PRE_PREPARE && extension_change_pending)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot PREPARE a transaction that creates or drops extension registry"),
				 errhint("Create or drop the extension in a transaction that commits directly.")));
	if (event == XACT_EVENT_COMMIT && extension_change_pending)
	{
		Latch	   *latches[REG_NUM_WORKERS + 1];
		int			i;

		SpinLockAcquire(&WorkerSlots->mutex);
		WorkerSlots->extension_gen++;
		for (i = 0; i < REG_NUM_WORKERS; i++)
			latches[i] = WorkerSlots->workers[i].latch;
		latches[REG_NUM_WORKERS] = WorkerSlots->launcher_latch;
		SpinLockRelease(&WorkerSlots->mutex);
		for (i = 0; i <= REG_NUM_WORKERS; i++)
			if (latches[i])
				SetLatch(latches[i]);
	}
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
		extension_change_pending = false;
}

/*
 * The extension is being created or dropped in this transaction: at
 * commit the launcher and the workers are told (they look again whether
 * the extension exists).
 */
void
worker_extension_changing(void)
{
	static bool registered = false;

	if (!registered)
	{
		RegisterXactCallback(extension_xact_callback, NULL);
		registered = true;
	}
	extension_change_pending = true;
}

uint64
worker_extension_gen(void)
{
	uint64		gen;

	SpinLockAcquire(&WorkerSlots->mutex);
	gen = WorkerSlots->extension_gen;
	SpinLockRelease(&WorkerSlots->mutex);
	return gen;
}

/* Whether a worker of this kind is attached (a process that is alive). */
bool
worker_running(int which)
{
	pid_t		pid = worker_pid(which);

	return pid != 0 && kill(pid, 0) == 0;
}

/*
 * Whether the last worker of this kind left because the extension was not
 * there, and the extension_gen it saw; the launcher takes the note once.
 */
bool
worker_take_idle_exit(int which, uint64 *gen)
{
	bool		idle;

	SpinLockAcquire(&WorkerSlots->mutex);
	idle = WorkerSlots->workers[which].idle_exit;
	*gen = WorkerSlots->workers[which].idle_gen;
	WorkerSlots->workers[which].idle_exit = false;
	SpinLockRelease(&WorkerSlots->mutex);
	return idle;
}

static int	my_worker = -1;

static void
worker_detach(int code, Datum arg)
{
	SpinLockAcquire(&WorkerSlots->mutex);
	WorkerSlots->workers[my_worker].pid = 0;
	WorkerSlots->workers[my_worker].latch = NULL;
	SpinLockRelease(&WorkerSlots->mutex);
}

static uint64 seen_extension_gen = 0;

/*
 * Common start of the database-connected workers.  A worker that finds no
 * extension leaves at once (worker_check_extension).
 */
void
worker_attach(int which)
{
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, worker_sigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(registry_database, NULL, 0);

	my_worker = which;
	SpinLockAcquire(&WorkerSlots->mutex);
	WorkerSlots->workers[which].pid = MyProcPid;
	WorkerSlots->workers[which].latch = MyLatch;
	WorkerSlots->workers[which].started_at = GetCurrentTimestamp();
	WorkerSlots->workers[which].starts++;
	WorkerSlots->workers[which].idle_exit = false;
	SpinLockRelease(&WorkerSlots->mutex);
	before_shmem_exit(worker_detach, (Datum) 0);
	pgstat_report_appname(worker_names[which]);
	seen_extension_gen = worker_extension_gen();
	worker_check_extension(true);
}

bool
worker_extension_exists(void)
{
	return OidIsValid(get_extension_oid("registry", true));
}

/*
 * Leave the database if the extension is not (or no longer) there: at
 * start, and whenever it was created or dropped since the last look.
 * The launcher starts the worker again after CREATE EXTENSION.  Called
 * outside any transaction.
 */
void
worker_check_extension(bool force)
{
	uint64		gen = worker_extension_gen();
	bool		exists;
	MemoryContext cxt = CurrentMemoryContext;

	if (!force && gen == seen_extension_gen)
		return;
	seen_extension_gen = gen;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	exists = worker_extension_exists();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	if (exists)
		return;
	SpinLockAcquire(&WorkerSlots->mutex);
	WorkerSlots->workers[my_worker].idle_exit = true;
	WorkerSlots->workers[my_worker].idle_gen = gen;
	SpinLockRelease(&WorkerSlots->mutex);
	ereport(DEBUG1,
			(errmsg("registry: the extension is not created in database \"%s\": the %s worker leaves it",
					registry_database, worker_names[my_worker])));
	proc_exit(0);
}

/*
 * Start one of the registry's dynamic workers: function (in this library)
 * runs with arg, connected to a database as it chooses, never restarted,
 * and the caller's latch is set when it starts and stops.  False if no
 * background worker slot is free.
 */
bool
worker_start_dynamic(const char *function, const char *name, Datum arg,
					 BackgroundWorkerHandle **handle)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "registry");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(bgw.bgw_type, BGW_MAXLEN, "%s", name);
	bgw.bgw_main_arg = arg;
	bgw.bgw_notify_pid = MyProcPid;
	return RegisterDynamicBackgroundWorker(&bgw, handle);
}

/*
 * Start a worker that lists in registry.row_keys the keys of table relid,
 * which a whole-table pull filled (worker.c, registry_keys_main): the sync
 * worker goes on pulling meanwhile.
 */
bool
worker_start_keys(Oid relid, BackgroundWorkerHandle **handle)
{
	return worker_start_dynamic("registry_keys_main", "registry keys",
								ObjectIdGetDatum(relid), handle);
}

/* pid of the worker attached to this slot, 0 if none */
pid_t
worker_pid(int which)
{
	pid_t		pid;

	SpinLockAcquire(&WorkerSlots->mutex);
	pid = WorkerSlots->workers[which].pid;
	SpinLockRelease(&WorkerSlots->mutex);
	return pid;
}

/* The launcher, at its start: extension changes wake it too. */
void
worker_set_launcher_latch(Latch *latch)
{
	SpinLockAcquire(&WorkerSlots->mutex);
	WorkerSlots->launcher_latch = latch;
	SpinLockRelease(&WorkerSlots->mutex);
}
