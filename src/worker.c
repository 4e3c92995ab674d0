/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The registry's background workers.
 *
 * registry launcher	static worker, started by the postmaster.  Waits
 *						until registry.database exists, then starts the
 *						workers below as dynamic workers and restarts them,
 *						with backoff, whenever they exit.
 * registry maintenance	rebuilds the digests from disk after a start,
 *						purges tombstones, expires leases, and has the
 *						notifier (notify.c) turn the change log into
 *						registry_change notifications.
 * registry keys		started by the sync worker, not the launcher, when a
 *						whole-table pull ends: lists the table's keys in
 *						registry.row_keys, then exits (registry_keys_main).
 *
 * The workers connect to registry.database only while the extension exists
 * there: a worker that finds it missing exits (quietly, noting why), and
 * the launcher starts it again only once CREATE EXTENSION registry has
 * committed.  DROP EXTENSION, at commit, wakes the workers, which then let
 * go of the database at once (so that it can be dropped, renamed or used
 * as a template).
 *
 * SIGTERM (a fast shutdown, pg_terminate_backend) ends a worker that is
 * waiting for work quietly, at the top of its loop; one in the middle of
 * work is interrupted as die() would, its transaction rolled back.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "changelog.h"
#include "expiry.h"
#include "node.h"
#include "notify.h"
#include "origins.h"
#include "purge.h"
#include "registry.h"
#include "worker.h"
#include "worker_slots.h"
#include "rebuild.h"
#include "registration.h"

PGDLLEXPORT void registry_launcher_main(Datum arg);
PGDLLEXPORT void registry_maintenance_main(Datum arg);
PGDLLEXPORT void registry_keys_main(Datum arg);

#define NOTIFY_POLL_MIN_MS		1	/* under load, look again this soon ... */
#define NOTIFY_POLL_MAX_MS		16	/* ... backing off to this */

static const char *const worker_functions[REG_NUM_WORKERS] = {
	"registry_maintenance_main",
	"registry_sync_main",
};

void
worker_register_launcher(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 5;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "registry");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "registry_launcher_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "registry launcher");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "registry launcher");
	RegisterBackgroundWorker(&bgw);
}

static object_access_hook_type prev_object_access_hook = NULL;

/* DROP EXTENSION registry: the workers leave the database at its commit */
static void
worker_object_access(ObjectAccessType access, Oid classId, Oid objectId,
					 int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == ExtensionRelationId &&
		objectId == get_extension_oid("registry", true))
		worker_extension_changing();
}

void
worker_install_hooks(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = worker_object_access;
}

/*
 * Without a database connection only a plain heap scan of pg_database is
 * possible (as the autovacuum launcher does).
 */
static bool
database_exists(void)
{
	bool		exists = false;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (strcmp(NameStr(db->datname), registry_database) == 0 &&
			db->datallowconn)
			exists = true;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return exists;
}

static bool
start_worker(int which, BackgroundWorkerHandle **handle)
{
	return worker_start_dynamic(worker_functions[which], worker_name(which),
								Int32GetDatum(which), handle);
}

void
registry_launcher_main(Datum arg)
{
	BackgroundWorkerHandle *handles[REG_NUM_WORKERS] = {NULL};
	TimestampTz next_start[REG_NUM_WORKERS] = {0};
	TimestampTz started[REG_NUM_WORKERS] = {0};
	int			backoff_ms[REG_NUM_WORKERS];
	bool		idle[REG_NUM_WORKERS] = {false};	/* left: no extension */
	uint64		idle_gen[REG_NUM_WORKERS] = {0};
	bool		said_waiting = false;
	int			i;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, worker_sigterm);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	worker_set_launcher_latch(MyLatch);

	for (i = 0; i < REG_NUM_WORKERS; i++)
		backoff_ms[i] = 1000;

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		worker_exit_if_asked(1);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		if (!database_exists())
		{
			if (!said_waiting)
				ereport(LOG,
						(errmsg("registry: waiting for database \"%s\" (registry.database) to exist",
								registry_database)));
			said_waiting = true;
		}
		else
		{
			TimestampTz now = GetCurrentTimestamp();

			for (i = 0; i < REG_NUM_WORKERS; i++)
			{
				pid_t		pid;

				if (worker_functions[i] == NULL)
					continue;
				if (handles[i] &&
					GetBackgroundWorkerPid(handles[i], &pid) == BGWH_STOPPED)
				{
					pfree(handles[i]);
					handles[i] = NULL;
					idle[i] = worker_take_idle_exit(i, &idle_gen[i]);
					/* a worker that ran a while restarts quickly */
					if (TimestampDifferenceExceeds(started[i], now, 60000))
						backoff_ms[i] = 1000;
					next_start[i] = TimestampTzPlusMilliseconds(now, idle[i] ? 0 : backoff_ms[i]);
					if (!idle[i])
						backoff_ms[i] = Min(backoff_ms[i] * 2, 60000);
				}
				if (handles[i] == NULL)
				{
					/*
					 * One started by a launcher before this one (killed and
					 * started again by the postmaster) is not ours to
					 * watch: wait for it to exit rather than run two, then
					 * see why it left.
					 */
					if (worker_running(i))
						continue;
					if (!idle[i] && worker_take_idle_exit(i, &idle_gen[i]))
						idle[i] = true;
					/*
					 * One that found no extension waits for CREATE
					 * EXTENSION (a change after what it saw).
					 */
					if (idle[i] && worker_extension_gen() == idle_gen[i])
						continue;
				}
				if (handles[i] == NULL && now >= next_start[i])
				{
					idle[i] = false;
					if (start_worker(i, &handles[i]))
						started[i] = now;
					else
					{
						handles[i] = NULL;
						ereport(LOG,
								(errmsg("registry: could not start the %s worker", worker_name(i)),
								 errhint("Raise max_worker_processes.")));
						next_start[i] = TimestampTzPlusMilliseconds(now, 10000);
					}
				}
			}
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* ---- maintenance worker ---- */

/* Rebuild digests from disk, if they need it. */
static void
maybe_rebuild(void)
{
	MemoryContext oldcxt = CurrentMemoryContext;

	if (node_is_ready())
		return;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	worker_xact_started();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "rebuilding registry digests");
	if (worker_extension_exists())
		rebuild_digests();
	else
	{
		/* nothing is registered, so nothing is stored either */
		hlc_observe_stored(0);
		node_set_ready();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	/* committing left TopMemoryContext current */
	MemoryContextSwitchTo(oldcxt);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Purge tombstones every peer has (purge.c has the rule), every half
 * retention but at least every ten minutes and at most every second.  A
 * failure is logged; the worker goes on.
 */
static void
maybe_purge(TimestampTz *last)
{
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile int64 n = 0;

	if (!node_is_ready() ||
		!TimestampDifferenceExceeds(*last, now,
									Min(600, Max(registry_tombstone_retention_s / 2, 1)) * 1000))
		return;
	*last = now;
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		worker_xact_started();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (worker_extension_exists())
			n = purge_tombstones();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(oldcxt);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		RESUME_INTERRUPTS();
		ereport(LOG,
				(errmsg("registry: could not purge tombstones: %s", edata->message)));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	if (n > 0)
		ereport(DEBUG1, (errmsg("registry: purged " INT64_FORMAT " tombstones", n)));
}

/*
 * registry keys: list in registry.row_keys the keys of one table that a
 * whole-table pull filled (bgw_main_arg: its relid), then exit.  Started
 * by the sync worker (worker_start_keys), which goes on pulling; the
 * table's writers wait meanwhile (row_keys_build), about a second per
 * million rows.  A table no longer deferred (another lister was first),
 * or no longer registered (or dropped: the lock is then on nothing), is
 * left alone.  SIGTERM interrupts it, its transaction rolled back: the
 * sync worker starts another one later.
 */
void
registry_keys_main(Datum arg)
{
	Oid			relid = DatumGetObjectId(arg);
	RegTable   *t;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(registry_database, NULL, 0);
	pgstat_report_appname("registry keys");
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();

	/*
	 * One lister at a time per table (a sync worker that restarted may
	 * start another): the lock conflicts with itself and with the table's
	 * writers, as row_keys_build()'s own does with writers; the second
	 * lister then sees the first one's work in its snapshot, taken after.
	 */
	if (!ConditionalLockRelationOid(relid, ShareRowExclusiveLock))
	{
		pgstat_report_activity(STATE_RUNNING, "waiting to list the keys of a table pulled whole");
		LockRelationOid(relid, ShareRowExclusiveLock);
	}
	PushActiveSnapshot(GetTransactionSnapshot());
	t = worker_extension_exists() ? regtable_by_relid(relid, true) : NULL;
	if (t != NULL && t->khash_deferred && !t->restored)
	{
		pgstat_report_activity(STATE_RUNNING, "listing the keys of a table pulled whole");
		registration_restore_khash(relid, NULL);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

void
registry_maintenance_main(Datum arg)
{
	MemoryContext loopcxt;
	bool		busy;
	bool		expiring;
	long		poll_ms = NOTIFY_POLL_MIN_MS;
	long		wait_ms;
	long		window_ms;
	TimestampTz now;
	TimestampTz last_purge = GetCurrentTimestamp();

	worker_attach(REG_WORKER_MAINTENANCE);
	loopcxt = AllocSetContextCreate(TopMemoryContext, "registry maintenance",
									ALLOCSET_DEFAULT_SIZES);

	/* notifications need no durability of their own */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		worker_exit_if_asked(0);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		worker_check_extension(false);

		MemoryContextSwitchTo(loopcxt);
		maybe_rebuild();
		maybe_purge(&last_purge);
		busy = notify_pending() > 0;
		expiring = expiry_run(GetCurrentTimestamp());
		if (expiring)
			busy = notify_pending() > 0 || busy;
		if (!busy && notify_listened())
		{
			/*
			 * Ask committers for a wake-up, then look once more: a commit
			 * either saw the request or published before this look.
			 */
			changelog_want_wakeup(true);
			busy = notify_pending() > 0;
			if (busy)
				changelog_want_wakeup(false);
		}
		else if (!busy)
		{
			/*
			 * Nobody listens: no commit need signal this worker, which
			 * passes their changes over when it wakes anyway.  The first
			 * LISTEN sets its latch.
			 */
			changelog_want_wakeup(false);
		}
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(loopcxt);

		/*
		 * Under load, poll instead of being signalled by every commit, and
		 * poll less often while every poll finds work: one notification
		 * transaction then carries many changes.  An idle notifier is
		 * woken by the next commit, so sparse changes go out at once.  No
		 * commit ends a merge window (registry.notify_delay): the worker
		 * wakes up when the first one closes, or the last change of a
		 * burst would wait for the next one.
		 */
		now = GetCurrentTimestamp();
		wait_ms = Min(busy ? poll_ms : 10000L, expiry_next_wait_ms(now));
		window_ms = notify_next_wait_ms(now);
		if (window_ms >= 0)
			wait_ms = Min(wait_ms, window_ms);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, PG_WAIT_EXTENSION);
		poll_ms = busy ? Min(poll_ms * 2, NOTIFY_POLL_MAX_MS) : NOTIFY_POLL_MIN_MS;
		ResetLatch(MyLatch);
	}
}
