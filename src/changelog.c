/*-------------------------------------------------------------------------
 *
 * changelog.c
 *	  The change log: a ring in shared memory of committed changes, in
 *	  commit order, numbered by seq (one per change, no gaps).  Peers read
 *	  it from the last seq they consumed (registry.changes_since), waiting
 *	  for the next commit if there is nothing yet (long polling); the
 *	  notifier (notify.c) turns it into registry_change notifications.
 *
 * The ring keeps registry.change_log_size entries; the oldest is
 * overwritten when it is full (counted in registry.node).  It lives only
 * in memory: after a restart it starts empty under a new epoch, and a
 * reader that was behind falls back to comparing digests.  Seqs only make
 * sense together with the epoch: CREATE EXTENSION starts a new one
 * (changelog_reset()), and readers get it with the entries they read.
 *
 * This file is the only one that knows the ring's layout.  Publication
 * (publish.c) appends a committed transaction's changes with
 * changelog_append() and then wakes the readers with
 * changelog_wake_readers(); serve.c, views.c and the notifier read copies
 * with changelog_read().
 *
 * Lock rules:
 *	- the ring, epoch, first_seq, last_seq, overwritten and truncations are
 *	  written under the change log's LWLock exclusive (changelog_append,
 *	  changelog_reset) and read under it shared; every function here takes
 *	  and releases it itself, and none is called with it held;
 *	- the origin number of an entry keeps its name while the entry is in
 *	  the ring (origins' rules): names are copied under the lock;
 *	- the notifier's progress and counters are under notifier_mutex
 *	  (spinlock);
 *	- notify_wanted is atomic: the idle notifier sets it, the next commit
 *	  clears it and sets the notifier's latch;
 *	- listeners is atomic: a session raises it (a full barrier, under the
 *	  lock) once its first LISTEN on a registry channel is queued, before
 *	  that commits, and lowers it at exit or once it listens on neither
 *	  channel (notify.c, at commit or rollback); the notifier reads it (after a
 *	  barrier) after copying changes from the ring (changelog_listeners);
 *	- listen_from is atomic, only raised, and written under the change
 *	  log's lock exclusive: by the session that raises listeners from 0,
 *	  to last_seq; the notifier reads it after copying changes;
 *	- a long poll's wake-up filter (ChangeLogWaiter, one per process,
 *	  indexed by pgprocno) is written only by its own process, skip mask
 *	  first, then the atomic waiting flag (with a barrier); a committer
 *	  reads the flag, then the mask, after changelog_append() released
 *	  the lock, and sets the latches of the waiters its changes concern;
 *	  nwaiters (atomic) counts the registered ones, raised after the flag
 *	  and before the waiter's first look, so a committer that reads 0
 *	  after its append needs to wake nobody;
 *	- lock order: meta, acceptor, changelog, digest (shmem.h); publication
 *	  takes them one after another, never nested.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "changelog.h"
#include "origins.h"
#include "registry.h"
#include "worker_slots.h"

/* One committed change, as kept in the ring. */
typedef struct ChangeLogEntry
{
	uint64		seq;
	RegVersion	version;
	TimestampTz committed_at;
	int32		tid;
	uint32		khash;
	int16		origin;			/* index into the origin table */
	char		op;
	char		reason;			/* LEASE_REASON_*, 0 = none */
	uint16		keylen;
	char		key[FLEXIBLE_ARRAY_MEMBER];	/* NUL-terminated */
} ChangeLogEntry;

typedef struct ChangeLogShared
{
	LWLock	   *lock;

	/* lock */
	uint64		epoch;			/* changes at every start and CREATE EXTENSION */
	uint64		last_seq;		/* last published seq, 0 = none yet */
	uint64		first_seq;		/* oldest seq still in the ring */
	uint64		overwritten;	/* entries lost to wrap-around */
	uint64		truncations;	/* transactions too large for the ring */

	ConditionVariable changes_cv;	/* broadcast when changes are published */

	/*
	 * 1 while the maintenance worker is idle and wants a latch wake-up from
	 * the next commit; 0 while it polls on its own (under load), so that
	 * committers need not signal it each time.
	 */
	pg_atomic_uint32 notify_wanted;

	/* processes registered in ChangeLogWaiters now: none, no scan */
	pg_atomic_uint32 nwaiters;

	/*
	 * Sessions that have run LISTEN registry_change or registry_wakeup and
	 * not exited, nor committed an UNLISTEN of both (notify.c).  Never
	 * below the number that can receive a notification: while it is 0 the
	 * notifier passes changes over without a transaction and asks for no
	 * wake-ups.
	 */
	pg_atomic_uint32 listeners;

	/*
	 * The last seq published before the count last rose from 0: changes up
	 * to it committed before any LISTEN counted now could commit, so no
	 * listener needs them (changelog_listen_from).
	 */
	pg_atomic_uint64 listen_from;

	/* notifier progress (notifier_mutex) */
	slock_t		notifier_mutex;
	uint64		notified_seq;
	uint64		notifications_sent;
	uint64		notifications_lost;
	uint64		notifications_truncated;
} ChangeLogShared;

static ChangeLogShared *ChangeLog = NULL;
static char *ChangeLogRing = NULL;	/* [registry_change_log_size] entries */

/*
 * A process waiting in changelog_wait() for changes other than those of
 * some origins (a peer's long poll: its own changes, and those of the
 * nodes it follows directly).  In a full mesh of N nodes each applied
 * change would otherwise wake every peer's long poll on every node, N - 1
 * wake-ups per node per write that find nothing to send.  Origins are
 * bits: numbers 0 to 62; bit 63 stands for any other number and for "all"
 * (a gap in the log), and is never skipped.
 */
typedef struct ChangeLogWaiter
{
	pg_atomic_uint32 waiting;
	uint64		skip;			/* origins whose changes do not wake it */
	Latch	   *latch;
} ChangeLogWaiter;

#define WAKE_ALL	(UINT64CONST(1) << 63)

static ChangeLogWaiter *ChangeLogWaiters = NULL;	/* [registry_proc_slots()] */

/* The origins of the changes this process appended and has not woken for. */
static uint64 appended_origins = 0;

static Size
entry_size(void)
{
	return MAXALIGN(offsetof(ChangeLogEntry, key) + registry_max_key_length + 1);
}

/* The ring slot of seq (valid only for first_seq <= seq <= last_seq). */
static ChangeLogEntry *
entry_of(uint64 seq)
{
	uint64		idx = seq % (uint64) registry_change_log_size;

	return (ChangeLogEntry *) (ChangeLogRing + idx * entry_size());
}

static uint64
new_epoch(void)
{
	uint64		epoch;

	if (!pg_strong_random(&epoch, sizeof(epoch)))
		epoch = (uint64) GetCurrentTimestamp();
	/* keep it positive so SQL shows it as a plain bigint */
	epoch &= UINT64CONST(0x7FFFFFFFFFFFFFFF);
	if (epoch == 0)
		epoch = 1;
	return epoch;
}

static void changelog_mark_origins(bool *used);

Size
changelog_shmem_size(void)
{
	return add_size(add_size(MAXALIGN(sizeof(ChangeLogShared)),
							 MAXALIGN(mul_size(registry_change_log_size, entry_size()))),
					mul_size(registry_proc_slots(), sizeof(ChangeLogWaiter)));
}

/*
 * Attach to (or create) the change log at shared memory startup.  Caller
 * holds AddinShmemInitLock.  lock becomes the change log's LWLock.
 */
void
changelog_shmem_init(LWLock *lock)
{
	bool		found;

	origins_register_marker(changelog_mark_origins);

	ChangeLog = ShmemInitStruct("registry change log", changelog_shmem_size(),
								&found);
	ChangeLogRing = (char *) ChangeLog + MAXALIGN(sizeof(ChangeLogShared));
	ChangeLogWaiters = (ChangeLogWaiter *)
		(ChangeLogRing + MAXALIGN(mul_size(registry_change_log_size, entry_size())));
	if (found)
		return;
	for (int i = 0; i < registry_proc_slots(); i++)
	{
		pg_atomic_init_u32(&ChangeLogWaiters[i].waiting, 0);
		ChangeLogWaiters[i].skip = 0;
		ChangeLogWaiters[i].latch = NULL;
	}
	memset(ChangeLog, 0, sizeof(ChangeLogShared));
	ChangeLog->lock = lock;
	ChangeLog->epoch = new_epoch();
	ChangeLog->last_seq = 0;
	ChangeLog->first_seq = 1;
	ConditionVariableInit(&ChangeLog->changes_cv);
	pg_atomic_init_u32(&ChangeLog->notify_wanted, 1);
	pg_atomic_init_u32(&ChangeLog->nwaiters, 0);
	pg_atomic_init_u32(&ChangeLog->listeners, 0);
	pg_atomic_init_u64(&ChangeLog->listen_from, 0);
	SpinLockInit(&ChangeLog->notifier_mutex);
}

/*
 * CREATE EXTENSION starts from nothing: a new epoch tells readers that
 * earlier seqs mean nothing, and the ring is emptied (seqs go on).
 */
void
changelog_reset(void)
{
	uint64		last;

	LWLockAcquire(ChangeLog->lock, LW_EXCLUSIVE);
	ChangeLog->epoch = new_epoch();
	ChangeLog->first_seq = ChangeLog->last_seq + 1;
	last = ChangeLog->last_seq;
	LWLockRelease(ChangeLog->lock);

	SpinLockAcquire(&ChangeLog->notifier_mutex);
	ChangeLog->notified_seq = last;
	SpinLockRelease(&ChangeLog->notifier_mutex);

	/* the epoch ends every wait */
	appended_origins |= WAKE_ALL;
}

/*
 * Append one committed transaction's changes, in order, committed at now.
 * Called from the commit callback: cannot fail.  A transaction with more
 * changes than the ring holds leaves a gap instead (readers then compare
 * digests), and records is not read (the caller may pass NULL).
 * Returns the last seq given to them (0 for none), and their epoch.
 */
uint64
changelog_append(const ChangeLogRecord *records, int n, TimestampTz now,
				 uint64 *epoch)
{
	uint64		capacity = (uint64) registry_change_log_size;
	uint64		last;
	int			i;

	if (n == 0)
		return 0;
	LWLockAcquire(ChangeLog->lock, LW_EXCLUSIVE);
	if ((uint64) n > capacity)
	{
		/* cannot keep them all: readers see a gap and compare digests */
		appended_origins |= WAKE_ALL;
		ChangeLog->overwritten += ChangeLog->last_seq + 1 - ChangeLog->first_seq;
		ChangeLog->last_seq += n;
		ChangeLog->first_seq = ChangeLog->last_seq + 1;
		ChangeLog->truncations++;
	}
	else
	{
		for (i = 0; i < n; i++)
		{
			const ChangeLogRecord *r = &records[i];
			uint64		seq = ++ChangeLog->last_seq;
			ChangeLogEntry *e;

			if (seq - ChangeLog->first_seq >= capacity)
			{
				ChangeLog->first_seq = seq - capacity + 1;
				ChangeLog->overwritten++;
			}
			e = entry_of(seq);
			e->seq = seq;
			e->version = r->version;
			e->committed_at = now;
			e->tid = r->tid;
			e->khash = r->khash;
			e->origin = r->origin;
			appended_origins |= (r->origin >= 0 && r->origin < 63) ?
				(UINT64CONST(1) << r->origin) : WAKE_ALL;
			e->op = r->op;
			e->reason = r->reason;
			e->keylen = strlen(r->key);
			memcpy(e->key, r->key, e->keylen + 1);
		}
	}
	last = ChangeLog->last_seq;
	*epoch = ChangeLog->epoch;
	LWLockRelease(ChangeLog->lock);
	return last;
}

/*
 * After a publication: wake the peers waiting in registry.changes_since(),
 * and the notifier if it is idle (under load it polls).  Cannot fail.
 */
void
changelog_wake_readers(void)
{
	uint64		origins = appended_origins;

	appended_origins = 0;
	/* (every commit passes here: on a node no peer waits at, no scan) */
	if (origins != 0 && pg_atomic_read_u32(&ChangeLog->nwaiters) > 0)
	{
		int			n = registry_proc_slots();

		/* waiters that saw last_seq before this append set their flag first */
		pg_memory_barrier();
		for (int i = 0; i < n; i++)
		{
			ChangeLogWaiter *w = &ChangeLogWaiters[i];

			if (pg_atomic_read_u32(&w->waiting) == 0)
				continue;
			pg_read_barrier();
			if ((origins & ~w->skip) != 0 && w->latch != NULL)
				SetLatch(w->latch);
		}
	}
	ConditionVariableBroadcast(&ChangeLog->changes_cv);
	if (pg_atomic_exchange_u32(&ChangeLog->notify_wanted, 0) != 0)
		worker_set_latch(REG_WORKER_MAINTENANCE);
}

/*
 * Copy up to max changes after seq after (all of them if max <= 0) into
 * *out (one palloc'd chunk with their keys), and return how many.  When the ring no
 * longer holds after + 1, the copy starts at the oldest entry it holds:
 * the caller sees the gap as *first > after + 1.  *first, *last and
 * *epoch are the ring's as of the copy.
 */
int
changelog_read(uint64 after, int max, ChangeLogChange **out,
			   uint64 *first, uint64 *last, uint64 *epoch)
{
	ChangeLogChange *changes;
	char	   *keys;
	Size		keybytes = 0;
	uint64		from,
				upto,
				s;
	int			n;
	int			i;

	LWLockAcquire(ChangeLog->lock, LW_SHARED);
	*epoch = ChangeLog->epoch;
	*first = ChangeLog->first_seq;
	*last = ChangeLog->last_seq;
	from = Max(after + 1, ChangeLog->first_seq);
	upto = ChangeLog->last_seq;
	if (max > 0 && from <= upto && upto - from >= (uint64) max)
		upto = from + (uint64) max - 1;
	n = from <= upto ? (int) (upto - from + 1) : 0;
	for (s = from; s <= upto; s++)
		keybytes += entry_of(s)->keylen + 1;
	/* one chunk: a pfree() of *out frees the keys too */
	changes = palloc(sizeof(ChangeLogChange) * Max(n, 1) + keybytes);
	keys = (char *) (changes + Max(n, 1));
	for (i = 0, s = from; i < n; i++, s++)
	{
		ChangeLogEntry *e = entry_of(s);
		ChangeLogChange *c = &changes[i];
		const char *o = origins_name(e->origin);

		c->seq = e->seq;
		c->version = e->version;
		c->committed_at = e->committed_at;
		c->tid = e->tid;
		c->khash = e->khash;
		c->op = e->op;
		c->reason = e->reason;
		/* the name while the entry holds its origin number */
		if (o)
			strlcpy(c->origin, o, REGISTRY_NAME_LEN);
		else
			c->origin[0] = '\0';
		c->key = keys;
		memcpy(keys, e->key, e->keylen + 1);
		keys += e->keylen + 1;
	}
	LWLockRelease(ChangeLog->lock);
	*out = changes;
	return n;
}

/* A process's wait ends: its filter goes, and the count with it. */
static void
waiter_unregister(void)
{
	ChangeLogWaiter *me = &ChangeLogWaiters[MyProc->pgprocno];

	if (pg_atomic_read_u32(&me->waiting) == 0)
		return;
	pg_atomic_write_u32(&me->waiting, 0);
	pg_atomic_fetch_sub_u32(&ChangeLog->nwaiters, 1);
}

/* ... also when a FATAL (a terminated backend) skips the wait's cleanup */
static bool waiter_exit_registered = false;

static void
waiter_at_exit(int code, Datum arg)
{
	if (MyProc != NULL)
		waiter_unregister();
}

/* changelog_wait()'s loop; filtered: woken by the waiter's latch, not the CV */
static uint64
wait_loop(uint64 after, int max, const uint64 *epoch,
		  const char *const *exclude, int nexclude, TimestampTz deadline,
		  bool filtered, bool watch_client)
{
	for (;;)
	{
		bool		wake = false;
		long		left;

		/* on the list before looking: a broadcast after the look sets the latch */
		if (!filtered)
			ConditionVariablePrepareToSleep(&ChangeLog->changes_cv);
		LWLockAcquire(ChangeLog->lock, LW_SHARED);
		if (epoch && ChangeLog->epoch != *epoch)
			wake = true;
		else if (ChangeLog->last_seq != after)
		{
			uint64		l = ChangeLog->last_seq;
			uint64		s;

			wake = true;
			if (nexclude > 0 && l > after &&
				after + 1 >= ChangeLog->first_seq &&
				l - after <= (uint64) max)
			{
				wake = false;
				for (s = after + 1; s <= l && !wake; s++)
				{
					const char *o = origins_name(entry_of(s)->origin);
					int			k;

					wake = true;
					for (k = 0; o != NULL && k < nexclude && wake; k++)
						wake = strcmp(o, exclude[k]) != 0;
				}
				if (!wake)
					after = l;
			}
		}
		LWLockRelease(ChangeLog->lock);
		if (wake)
			break;
		left = (long) ((deadline - GetCurrentTimestamp()) / 1000);
		if (left <= 0)
			break;
		if (watch_client)
		{
			bool		input = registry_client_wait(left, PG_WAIT_EXTENSION);

			CHECK_FOR_INTERRUPTS();
			if (input)
			{
				elog(DEBUG1, "registry: a long poll ended early: its client sent more");
				break;
			}
		}
		else if (filtered)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 left, PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		else
			(void) ConditionVariableTimedSleep(&ChangeLog->changes_cv, left,
											   PG_WAIT_EXTENSION);
	}
	return after;
}

/*
 * Wait up to wait_ms (> 0) until there is something after seq after:
 * a commit wakes the caller at once.  With epoch, a change of epoch ends
 * the wait too.  Changes whose origin is one of exclude do not end it (the
 * caller would only get an empty answer): they are stepped over if there
 * are no more than max of them, and the seq returned says how far (else
 * after itself).  Origins are compared by name while the entries are held.
 *
 * A wait with exclude is woken only by commits of other origins' changes
 * (ChangeLogWaiter), not by every commit: the origins' numbers are looked
 * up once, as a hint (a number reclaimed and given to another origin
 * meanwhile could leave its first change to the end of the wait, never
 * unseen); the names are what is compared.
 *
 * With watch_client (and a client to watch), input arriving from the
 * client ends the wait too (if none was waiting when it began): a client
 * that sends anything more (its next request, pipelined, or a Sync) wants
 * the answer now rather than at the wait's end, and one that went away
 * ends the wait as well.  Input already read into the backend's buffer
 * with the request (its Flush or Sync) does not count.
 */
uint64
changelog_wait(uint64 after, int max, const uint64 *epoch,
			   const char *const *exclude, int nexclude, int wait_ms,
			   bool watch_client)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   wait_ms);
	ChangeLogWaiter *volatile me = NULL;
	volatile uint64 result = after;

	/*
	 * Only input that arrives during the wait ends it: a client that went
	 * away, or left input unread, before it began (a loop of calls in one
	 * statement, say) would otherwise end every wait at once.
	 */
	watch_client = watch_client && registry_client_watchable() &&
		!registry_client_wait(0, PG_WAIT_EXTENSION);
	/* that look reset the latch: a cancel that set it is served now */
	CHECK_FOR_INTERRUPTS();
	if (nexclude > 0 && MyProc != NULL)
	{
		/* woken only by changes of other origins (ChangeLogWaiter) */
		uint64		skip = 0;
		int			k;

		for (k = 0; k < nexclude; k++)
		{
			int16		o = origins_lookup(exclude[k]);

			if (o >= 0 && o < 63)
				skip |= UINT64CONST(1) << o;
		}
		if (!waiter_exit_registered)
		{
			before_shmem_exit(waiter_at_exit, (Datum) 0);
			waiter_exit_registered = true;
		}
		me = &ChangeLogWaiters[MyProc->pgprocno];
		me->skip = skip;
		me->latch = MyLatch;
		pg_write_barrier();
		pg_atomic_write_u32(&me->waiting, 1);
		pg_atomic_fetch_add_u32(&ChangeLog->nwaiters, 1);
		pg_memory_barrier();
	}
	PG_TRY();
	{
		result = wait_loop(after, max, epoch, exclude, nexclude, deadline,
						   me != NULL, watch_client);
	}
	PG_FINALLY();
	{
		if (me)
			waiter_unregister();
		ConditionVariableCancelSleep();
	}
	PG_END_TRY();
	return result;
}

void
changelog_stats(ChangeLogStats *out)
{
	LWLockAcquire(ChangeLog->lock, LW_SHARED);
	out->epoch = ChangeLog->epoch;
	out->first_seq = ChangeLog->first_seq;
	out->last_seq = ChangeLog->last_seq;
	out->overwritten = ChangeLog->overwritten;
	out->truncations = ChangeLog->truncations;
	LWLockRelease(ChangeLog->lock);

	SpinLockAcquire(&ChangeLog->notifier_mutex);
	out->notified_seq = ChangeLog->notified_seq;
	out->notifications_sent = ChangeLog->notifications_sent;
	out->notifications_lost = ChangeLog->notifications_lost;
	out->notifications_truncated = ChangeLog->notifications_truncated;
	SpinLockRelease(&ChangeLog->notifier_mutex);
}

/*
 * Mark the origin numbers the ring's entries hold: origins.c calls this
 * (registered at init) when it reclaims.  Caller holds meta_lock
 * exclusively; takes the change log's lock.
 */
static void
changelog_mark_origins(bool *used)
{
	uint64		s;

	LWLockAcquire(ChangeLog->lock, LW_SHARED);
	for (s = ChangeLog->first_seq; s <= ChangeLog->last_seq; s++)
	{
		int16		o = entry_of(s)->origin;

		if (o >= 0 && o < registry_max_origins)
			used[o] = true;
	}
	LWLockRelease(ChangeLog->lock);
}

/* ---- the notifier's progress ---- */

/* The last seq the notifier has dealt with. */
uint64
changelog_notified_seq(void)
{
	uint64		seq;

	SpinLockAcquire(&ChangeLog->notifier_mutex);
	seq = ChangeLog->notified_seq;
	SpinLockRelease(&ChangeLog->notifier_mutex);
	return seq;
}

/* The notifier has dealt with everything up to notified_seq. */
void
changelog_notified(uint64 notified_seq, uint64 sent, uint64 lost,
				   uint64 truncated)
{
	SpinLockAcquire(&ChangeLog->notifier_mutex);
	/* only forward: a CREATE EXTENSION meanwhile may have moved it on */
	if (notified_seq > ChangeLog->notified_seq)
		ChangeLog->notified_seq = notified_seq;
	ChangeLog->notifications_sent += sent;
	ChangeLog->notifications_lost += lost;
	ChangeLog->notifications_truncated += truncated;
	SpinLockRelease(&ChangeLog->notifier_mutex);
}

/*
 * The idle notifier asks for a latch wake-up from the next publication
 * (want), or withdraws the request once it finds work after all.
 */
void
changelog_want_wakeup(bool want)
{
	(void) pg_atomic_exchange_u32(&ChangeLog->notify_wanted, want ? 1 : 0);
}

/* ---- sessions that may listen ---- */

static bool listener_counted = false;
static bool listener_exit_registered = false;

/*
 * This session no longer counts as a listener: it exits, or it no longer
 * listens on any registry channel (notify.c: its UNLISTEN or DISCARD ALL
 * committed, or the transaction of its LISTEN rolled back).  Called from
 * transaction callbacks too: no ERROR.
 */
void
changelog_listener_left(void)
{
	if (listener_counted && ChangeLog != NULL)
	{
		pg_atomic_fetch_sub_u32(&ChangeLog->listeners, 1);
		listener_counted = false;
	}
}

static void
listener_at_exit(int code, Datum arg)
{
	changelog_listener_left();
}

/*
 * This session has queued a LISTEN on a registry channel (a
 * ProcessUtility hook, notify.c), which takes effect when it commits:
 * counted once, until it exits or listens on neither channel
 * (changelog_listener_left), and the notifier woken, which may be
 * asleep without asking for wake-ups.  A change the notifier passes over
 * for want of listeners was copied from the ring before it read the
 * count, so before this rose: it committed before this LISTEN does, and
 * the listener's own reads see it.  Counted when the LISTEN is queued,
 * not at its commit, so that no change committed after it can be passed
 * over; the count drops again (changelog_listener_left) only once the
 * session no longer listens: a count too high costs notifications nobody
 * reads, one too low would lose some.
 *
 * The first listener also records the last seq published before it
 * counted (listen_from), under the lock, so that no change published
 * after it can be covered: changes up to it are nobody's to be told of.
 */
void
changelog_listener_arrived(void)
{
	if (listener_counted || ChangeLog == NULL)
		return;
	/* once per session: a session may listen, unlisten and listen again */
	if (!listener_exit_registered)
	{
		before_shmem_exit(listener_at_exit, (Datum) 0);
		listener_exit_registered = true;
	}
	LWLockAcquire(ChangeLog->lock, LW_EXCLUSIVE);
	listener_counted = true;
	if (pg_atomic_fetch_add_u32(&ChangeLog->listeners, 1) == 0 &&
		pg_atomic_read_u64(&ChangeLog->listen_from) < ChangeLog->last_seq)
		pg_atomic_write_u64(&ChangeLog->listen_from, ChangeLog->last_seq);
	LWLockRelease(ChangeLog->lock);
	worker_set_latch(REG_WORKER_MAINTENANCE);
}

/*
 * Changes up to this seq need no notification: they were published
 * before the first of the present listeners counted.  The notifier reads
 * it after copying changes from the ring, so that a first listener that
 * counted meanwhile is not told of changes older than its LISTEN.
 */
uint64
changelog_listen_from(void)
{
	return pg_atomic_read_u64(&ChangeLog->listen_from);
}

/*
 * Sessions that may receive registry notifications now.  The notifier
 * calls it after copying changes from the ring (see above).
 */
uint32
changelog_listeners(void)
{
	pg_memory_barrier();
	return pg_atomic_read_u32(&ChangeLog->listeners);
}
