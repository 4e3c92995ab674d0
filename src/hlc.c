/*-------------------------------------------------------------------------
 *
 * hlc.c
 *	  The node's hybrid logical clock, which stamps every version.
 *
 * A stamp is wall-clock milliseconds (high 48 bits) and a logical counter
 * (low 16 bits).  The clock never issues the same stamp twice, never goes
 * backwards when the wall clock does (the logical part grows instead), and
 * advances past every version received from a peer.
 *
 * Surviving restarts: every stamp issued or received is below a "lease"
 * kept durably in $PGDATA/registry_clock.  The lease is pushed ahead
 * (registry_clock_lease_ms) well before the clock reaches it, so writers do
 * not wait for the file.  After a restart the clock starts above the old
 * lease, hence above every version already stored, even when the wall
 * clock has stepped back.  If the file is missing (a restored backup, a
 * fresh data directory) writers wait until the maintenance worker has read
 * the largest stored version from the registered tables' version columns
 * and registry.tombstones.
 *
 * Lock rules: the clock state (last stamp, lease, readiness, counters) is
 * read and written under HlcState's spinlock, held only for a few
 * assignments.  Writing the lease file is serialised by the lease lock
 * passed to hlc_shmem_init() (lease_lock), held exclusively around the
 * write and never while the spinlock is held; a backend that finds it
 * taken and whose stamp is still covered does not wait.  ready_cv is
 * broadcast once, when the clock becomes ready.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <unistd.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/fd.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "registry.h"

#define HLC_LEASE_FILE		"registry_clock"
#define HLC_LEASE_TMP		"registry_clock.tmp"
#define HLC_LEASE_MS		10000	/* how far ahead the lease is pushed */

typedef struct HlcState
{
	LWLock	   *lease_lock;		/* serialises lease file writes */
	slock_t		mutex;
	RegVersion	last;			/* last stamp issued or observed */
	int64		offset_ms;		/* test hook: shifts the wall clock */
	RegVersion	lease;			/* durable bound: stamps never exceed it */
	bool		ready;			/* last is above every stored version */
	ConditionVariable ready_cv;
	uint64		lease_writes;
	uint64		clock_regressions;	/* wall clock seen going backwards */
	uint64		refused_skew;	/* remote versions refused */
	int64		last_wall_ms;
} HlcState;

static HlcState *Hlc = NULL;

PG_FUNCTION_INFO_V1(registry_hlc_now);
PG_FUNCTION_INFO_V1(registry_hlc_update);
PG_FUNCTION_INFO_V1(registry_set_clock_offset);
PG_FUNCTION_INFO_V1(registry_version_time);

Size
hlc_shmem_size(void)
{
	return sizeof(HlcState);
}

static bool
read_lease_file(RegVersion *lease)
{
	FILE	   *f;
	unsigned long long v;
	bool		ok = false;

	f = AllocateFile(HLC_LEASE_FILE, "r");
	if (f == NULL)
		return false;
	if (fscanf(f, "lease %llu", &v) == 1 && v > 0)
	{
		*lease = (RegVersion) v;
		ok = true;
	}
	FreeFile(f);
	if (!ok)
		ereport(LOG,
				(errmsg("registry: ignoring unreadable clock lease file \"%s\"",
						HLC_LEASE_FILE)));
	return ok;
}

/*
 * Called by the shared memory startup hook, holding AddinShmemInitLock;
 * lease_lock serialises writes of the lease file.
 */
void
hlc_shmem_init(LWLock *lease_lock)
{
	bool		hfound;
	RegVersion	lease;

	Hlc = ShmemInitStruct("registry clock", sizeof(HlcState), &hfound);
	if (hfound)
		return;

	memset(Hlc, 0, sizeof(HlcState));
	Hlc->lease_lock = lease_lock;
	SpinLockInit(&Hlc->mutex);
	ConditionVariableInit(&Hlc->ready_cv);
	if (read_lease_file(&lease))
	{
		/* every stamp of the previous life is <= lease */
		Hlc->last = lease;
		Hlc->lease = lease;
		Hlc->ready = true;
	}
}

static int64
hlc_physical_now_ms(void)
{
	TimestampTz now = GetCurrentTimestamp();

	return now / 1000 +
		((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000);
}

static int64
wall_ms(void)
{
	return hlc_physical_now_ms() + Hlc->offset_ms;
}

/*
 * Write the lease durably.  The caller holds lease_lock.  Errors are
 * reported as ERROR: a clock whose bound cannot be persisted must not issue
 * stamps above it.
 */
static void
write_lease_file(RegVersion lease)
{
	int			fd;
	char		buf[64];
	int			len;

	len = snprintf(buf, sizeof(buf), "lease " UINT64_FORMAT "\n", lease);
	fd = OpenTransientFile(HLC_LEASE_TMP, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("registry: could not create clock lease file \"%s\": %m",
						HLC_LEASE_TMP)));
	errno = 0;
	if (write(fd, buf, len) != len)
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno ? save_errno : ENOSPC;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("registry: could not write clock lease file \"%s\": %m",
						HLC_LEASE_TMP)));
	}
	if (pg_fsync(fd) != 0)
	{
		int			save_errno = errno;

		CloseTransientFile(fd);
		errno = save_errno;
		ereport(data_sync_elevel(ERROR),
				(errcode_for_file_access(),
				 errmsg("registry: could not fsync clock lease file \"%s\": %m",
						HLC_LEASE_TMP)));
	}
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("registry: could not close clock lease file \"%s\": %m",
						HLC_LEASE_TMP)));
	if (durable_rename(HLC_LEASE_TMP, HLC_LEASE_FILE, ERROR) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("registry: could not rename clock lease file")));
}

/*
 * Make the lease cover "target".  With wait = false only try: another
 * backend is already extending it and our stamp is still covered.
 */
static void
extend_lease(RegVersion target, bool wait)
{
	RegVersion	newlease;
	RegVersion	cur;

	if (wait)
		LWLockAcquire(Hlc->lease_lock, LW_EXCLUSIVE);
	else if (!LWLockConditionalAcquire(Hlc->lease_lock, LW_EXCLUSIVE))
		return;

	SpinLockAcquire(&Hlc->mutex);
	cur = Hlc->lease;
	SpinLockRelease(&Hlc->mutex);

	if (cur >= target + HLC_MAKE(HLC_LEASE_MS / 2, 0))
	{
		LWLockRelease(Hlc->lease_lock);
		return;
	}

	newlease = HLC_MAKE(Max(HLC_PHYS(target), (uint64) Max(wall_ms(), 0)) +
						HLC_LEASE_MS, 0);
	PG_TRY();
	{
		write_lease_file(newlease);
	}
	PG_FINALLY();
	{
		LWLockRelease(Hlc->lease_lock);
	}
	PG_END_TRY();

	SpinLockAcquire(&Hlc->mutex);
	if (newlease > Hlc->lease)
		Hlc->lease = newlease;
	Hlc->lease_writes++;
	SpinLockRelease(&Hlc->mutex);
}

/*
 * Writers must not stamp until the clock is known to be above every
 * stored version; normally that is immediate (lease file), otherwise the
 * maintenance worker's rebuild sets it.
 */
static void
hlc_wait_ready(void)
{
	/*
	 * Once ready, the clock stays ready: shared memory is only reset
	 * together with every process that saw it.
	 */
	static bool known_ready = false;
	bool		ready;

	if (known_ready)
		return;
	SpinLockAcquire(&Hlc->mutex);
	ready = Hlc->ready;
	SpinLockRelease(&Hlc->mutex);
	if (ready)
	{
		known_ready = true;
		return;
	}

	ConditionVariablePrepareToSleep(&Hlc->ready_cv);
	for (;;)
	{
		SpinLockAcquire(&Hlc->mutex);
		ready = Hlc->ready;
		SpinLockRelease(&Hlc->mutex);
		if (ready)
			break;
		ConditionVariableTimedSleep(&Hlc->ready_cv, 1000, PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	known_ready = true;
}

RegVersion
hlc_now(void)
{
	hlc_wait_ready();

	for (;;)
	{
		int64		pt = wall_ms();
		RegVersion	cand;
		RegVersion	lease;

		SpinLockAcquire(&Hlc->mutex);
		if (pt < Hlc->last_wall_ms)
			Hlc->clock_regressions++;
		Hlc->last_wall_ms = pt;
		if (pt > 0 && (uint64) pt > HLC_PHYS(Hlc->last))
			cand = HLC_MAKE(pt, 0);
		else
			cand = Hlc->last + 1;	/* a full counter carries into the ms */
		lease = Hlc->lease;
		if (cand <= lease)
			Hlc->last = cand;
		SpinLockRelease(&Hlc->mutex);

		if (cand <= lease)
		{
			/* push the lease ahead before anyone has to wait for it */
			if (cand + HLC_MAKE(HLC_LEASE_MS / 2, 0) > lease)
				extend_lease(cand, false);
			return cand;
		}
		extend_lease(cand, true);
	}
}

/* The last stamp, without issuing one. */
RegVersion
hlc_current(void)
{
	RegVersion	v;

	SpinLockAcquire(&Hlc->mutex);
	v = Hlc->last;
	SpinLockRelease(&Hlc->mutex);
	return v;
}

RegVersion
hlc_lease(void)
{
	RegVersion	v;

	SpinLockAcquire(&Hlc->mutex);
	v = Hlc->lease;
	SpinLockRelease(&Hlc->mutex);
	return v;
}

int64
hlc_clock_offset_ms(void)
{
	return Hlc->offset_ms;
}

/* Make every later stamp greater than v, persisting the bound first. */
static void
hlc_advance_to(RegVersion v)
{
	RegVersion	lease;

	SpinLockAcquire(&Hlc->mutex);
	lease = Hlc->lease;
	SpinLockRelease(&Hlc->mutex);
	if (v + HLC_MAKE(HLC_LEASE_MS / 2, 0) > lease)
		extend_lease(v, v > lease);

	SpinLockAcquire(&Hlc->mutex);
	if (v > Hlc->last)
		Hlc->last = v;
	SpinLockRelease(&Hlc->mutex);
}

/* The largest remote version the receive rule accepts right now. */
RegVersion
hlc_max_acceptable(void)
{
	int64		limit_ms = wall_ms() + registry_max_clock_skew_ms;

	return HLC_MAKE(Max(limit_ms, 0), HLC_LOGICAL_MASK);
}

/*
 * The receive rule.  Returns false, without touching the clock, when the
 * remote version is more than registry.max_clock_skew ahead of our wall
 * clock; *max_allowed then says what the limit was.
 */
bool
hlc_update(RegVersion remote, RegVersion *max_allowed)
{
	RegVersion	limit = hlc_max_acceptable();

	if (max_allowed)
		*max_allowed = limit;
	if (remote > limit)
	{
		SpinLockAcquire(&Hlc->mutex);
		Hlc->refused_skew++;
		SpinLockRelease(&Hlc->mutex);
		return false;
	}
	hlc_wait_ready();
	hlc_advance_to(remote);
	return true;
}

/*
 * A version found on disk (rebuild, or a key's previous version in the
 * trigger).  Stored facts are never refused; the first call also releases
 * writers waiting for the clock after a start without a lease file.
 */
void
hlc_observe_stored(RegVersion stored)
{
	bool		was_ready;

	hlc_advance_to(stored);

	SpinLockAcquire(&Hlc->mutex);
	was_ready = Hlc->ready;
	Hlc->ready = true;
	SpinLockRelease(&Hlc->mutex);
	if (!was_ready)
		ConditionVariableBroadcast(&Hlc->ready_cv);
}

/* Counters for registry.node. */
void
hlc_counters(uint64 *lease_writes, uint64 *regressions, uint64 *refused,
			 bool *ready)
{
	SpinLockAcquire(&Hlc->mutex);
	*lease_writes = Hlc->lease_writes;
	*regressions = Hlc->clock_regressions;
	*refused = Hlc->refused_skew;
	*ready = Hlc->ready;
	SpinLockRelease(&Hlc->mutex);
}

/* ---- SQL interface ---- */

Datum
registry_hlc_now(PG_FUNCTION_ARGS)
{
	registry_check_preloaded();
	PG_RETURN_INT64((int64) hlc_now());
}

Datum
registry_hlc_update(PG_FUNCTION_ARGS)
{
	int64		remote = PG_GETARG_INT64(0);
	RegVersion	limit;

	registry_check_preloaded();
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only superusers may feed the registry clock")));
	if (remote <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("version must be positive")));
	if (!hlc_update((RegVersion) remote, &limit))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_EXCEPTION),
				 errmsg("version " INT64_FORMAT " is too far ahead of the local clock",
						remote),
				 errdetail("Versions above " UINT64_FORMAT " (registry.max_clock_skew = %d ms ahead) are refused.",
						   limit, registry_max_clock_skew_ms)));
	PG_RETURN_INT64((int64) hlc_current());
}

/*
 * Shift this node's wall clock, for tests of clock steps.  The offset is
 * instance-wide and lasts until reset or restart.
 */
Datum
registry_set_clock_offset(PG_FUNCTION_ARGS)
{
	Interval   *iv = PG_GETARG_INTERVAL_P(0);
	int64		ms;

	registry_check_preloaded();
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("only superusers may offset the registry clock")));
	ms = iv->time / 1000 +
		((int64) iv->day * SECS_PER_DAY + (int64) iv->month * 30 * SECS_PER_DAY) * 1000;
	SpinLockAcquire(&Hlc->mutex);
	Hlc->offset_ms = ms;
	SpinLockRelease(&Hlc->mutex);
	PG_RETURN_VOID();
}

/* The wall-clock part of a version, as a timestamp. */
Datum
registry_version_time(PG_FUNCTION_ARGS)
{
	int64		v = PG_GETARG_INT64(0);
	int64		ms = (int64) HLC_PHYS((uint64) v);
	TimestampTz ts;

	ts = (ms - ((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000)) * 1000;
	PG_RETURN_TIMESTAMPTZ(ts);
}
