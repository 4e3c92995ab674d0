/*-------------------------------------------------------------------------
 *
 * leases.c
 *	  The leases this node holds: for each row of an ephemeral registry
 *	  table whose newest version this node wrote (its registry_origin is
 *	  this node), the deadline by which a client must renew it, in a shared
 *	  hash table of registry.max_leases entries.  Renewing moves the
 *	  deadline and writes nothing: no row, no WAL, no change log entry.
 *	  The maintenance worker (expiry.c) deletes the rows whose deadline
 *	  passed.  Also the lease counters of registry.node.
 *
 * The hash is a cache of durable truth, like the acceptors: the rows say
 * who owns them (registry_origin), and a row this node owns without a
 * lease here (after a restart, an eviction, a bulk change) is given a full
 * TTL by the next adoption pass (expiry.c), or by its next renewal.  So
 * losing an entry can only lengthen a row's life, never shorten it.  When
 * the hash is full, a new grant evicts the least recently renewed lease
 * not bound to a live session (counted); adoption never evicts.
 *
 * A lease may be bound to a session (registry.lease_session): it has no
 * deadline while the backend that wrote the row lives, and one TTL after
 * it ends.  The backend's exit callback ends its leases; a pass that finds
 * a bound backend gone ends them too (the backend died without running
 * callbacks, which PostgreSQL answers with a crash restart anyway).  Bound
 * leases live on a list of their own, never evicted; they may take at
 * most half of the entries (beyond that, a bound write gets an ordinary
 * lease), so that bound sessions cannot starve the other leases.
 *
 * Lock rules: everything here is guarded by the lock passed to
 * leases_shmem_init() (leases_lock), taken exclusively to change and
 * shared to read; nothing else is taken while it is held except
 * ProcArrayLock (BackendPidGetProc, to tell whether a bound session
 * lives).  leases_apply() runs in a commit callback: it never allocates
 * and never raises an error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/ilist.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"

#include "leases.h"
#include "registry.h"
#include "worker_slots.h"

typedef struct LeaseKey
{
	int32		tid;
	char		key[FLEXIBLE_ARRAY_MEMBER];
} LeaseKey;

typedef struct LeaseData
{
	dlist_node	lru;			/* in LeaseShared.lru (most recently granted
								 * or renewed first) or, bound to a live
								 * session, in LeaseShared.bound_list */
	uint32		khash;
	int64		ttl_ms;
	TimestampTz granted_at;
	TimestampTz renewed_at;
	TimestampTz deadline;		/* 0 while its session lives */
	uint64		renewals;
	int			session_pid;	/* 0: not bound */
	TimestampTz session_ended_at;
} LeaseData;

typedef struct LeaseShared
{
	LWLock	   *lock;			/* leases_lock */
	dlist_head	lru;
	dlist_head	bound_list;		/* leases whose session still lives */
	int64		used;
	int64		bound;			/* length of bound_list */
	TimestampTz next_due;		/* no deadline is earlier (a lower bound) */
	uint64		adoption_gen;	/* bumped when rows may lack a lease */
	uint64		evictions;
	uint64		grants;
	uint64		renewals;
	uint64		ownership_moves;
	uint64		counts[LEASE_NUM_COUNTERS];
	bool		minority;
} LeaseShared;

static LeaseShared *Leases = NULL;
static HTAB *LeaseHash = NULL;
static Size key_size;
static Size data_offset;

/* whether this backend registered its session-end callback */
static bool session_callback_set = false;

#define ENTRY_DATA(e)	((LeaseData *) ((char *) (e) + data_offset))
#define DATA_ENTRY(d)	((LeaseKey *) ((char *) (d) - data_offset))

/* a session-bound lease's backend is looked for this often at most */
#define SESSION_CHECK_MS	1000

static void
compute_sizes(void)
{
	key_size = offsetof(LeaseKey, key) + registry_max_key_length + 1;
	data_offset = MAXALIGN(key_size);
}

static Size
entry_size(void)
{
	compute_sizes();
	return data_offset + sizeof(LeaseData);
}

static inline uint32
lease_hash_of(int32 tid, uint32 khash)
{
	return khash ^ ((uint32) tid * 0x85EBCA77U);
}

static uint32
lease_hash(const void *key, Size keysize)
{
	const LeaseKey *k = key;

	return lease_hash_of(k->tid, keys_hash(k->key, strlen(k->key)));
}

static int
lease_match(const void *key1, const void *key2, Size keysize)
{
	const LeaseKey *a = key1;
	const LeaseKey *b = key2;

	if (a->tid != b->tid)
		return 1;
	return strcmp(a->key, b->key);
}

static void *
lease_keycopy(void *dest, const void *src, Size keysize)
{
	LeaseKey   *d = dest;
	const LeaseKey *s = src;

	d->tid = s->tid;
	strlcpy(d->key, s->key, keysize - offsetof(LeaseKey, key));
	return dest;
}

Size
leases_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(LeaseShared)),
					hash_estimate_size(registry_max_leases, entry_size()));
}

/*
 * Called by the shared memory startup hook, holding AddinShmemInitLock;
 * lock guards everything here (see the lock rules above).
 */
void
leases_shmem_init(LWLock *lock)
{
	HASHCTL		info;
	bool		found;

	Leases = ShmemInitStruct("registry lease state", sizeof(LeaseShared),
							 &found);
	if (!found)
	{
		memset(Leases, 0, sizeof(LeaseShared));
		Leases->lock = lock;
		dlist_init(&Leases->lru);
		dlist_init(&Leases->bound_list);
		/* every row this node owns needs a lease after a start */
		Leases->adoption_gen = 1;
	}
	info.keysize = (compute_sizes(), key_size);
	info.entrysize = entry_size();
	info.hash = lease_hash;
	info.match = lease_match;
	info.keycopy = lease_keycopy;
	LeaseHash = ShmemInitHash("registry leases",
							  registry_max_leases, registry_max_leases,
							  &info,
							  HASH_ELEM | HASH_FUNCTION | HASH_COMPARE |
							  HASH_KEYCOPY | HASH_FIXED_SIZE);
}

/* a lookup key for (tid, key); the buffer is static: caller holds the lock */
static LeaseKey *
probe(int32 tid, const char *key)
{
	static union
	{
		LeaseKey	k;
		char		buf[offsetof(LeaseKey, key) + REGISTRY_MAX_KEY_BUF];
	}			kbuf;

	kbuf.k.tid = tid;
	strlcpy(kbuf.k.key, key, registry_max_key_length + 1);
	return &kbuf.k;
}

static LeaseData *
find(int32 tid, uint32 khash, const char *key)
{
	LeaseKey   *e;

	if (strlen(key) > (size_t) registry_max_key_length)
		return NULL;
	e = hash_search_with_hash_value(LeaseHash, probe(tid, key),
									lease_hash_of(tid, khash), HASH_FIND, NULL);
	return e ? ENTRY_DATA(e) : NULL;
}

static void
remove_entry(LeaseData *d)
{
	if (d->session_pid != 0 && d->deadline == 0)
		Leases->bound--;
	dlist_delete(&d->lru);
	hash_search(LeaseHash, DATA_ENTRY(d), HASH_REMOVE, NULL);
	Leases->used--;
}

static void
note_deadline(TimestampTz deadline)
{
	if (deadline != 0 && (Leases->next_due == 0 || deadline < Leases->next_due))
		Leases->next_due = deadline;
}

/* a new entry, evicting the least recently renewed one if allowed */
static LeaseData *
enter(int32 tid, uint32 khash, const char *key, bool evict, bool *found)
{
	LeaseKey   *e;
	LeaseData  *d;

	*found = false;
	if (strlen(key) > (size_t) registry_max_key_length)
		return NULL;			/* the table refuses such keys anyway */
	e = hash_search_with_hash_value(LeaseHash, probe(tid, key),
									lease_hash_of(tid, khash), HASH_FIND, NULL);
	if (e)
	{
		*found = true;
		return ENTRY_DATA(e);
	}
	if (Leases->used >= registry_max_leases)
	{
		/*
		 * The least recently renewed lease; bound ones are not on this
		 * list (a bound lease is never renewed, and its row would come
		 * back from adoption as an ordinary lease, expiring while its
		 * session lives).
		 */
		if (!evict || dlist_is_empty(&Leases->lru))
			return NULL;
		remove_entry(dlist_container(LeaseData, lru, dlist_tail_node(&Leases->lru)));
		Leases->evictions++;
		/* the evicted row still needs a lease: the next adoption gives one */
		Leases->adoption_gen++;
	}
	e = hash_search_with_hash_value(LeaseHash, probe(tid, key),
									lease_hash_of(tid, khash),
									HASH_ENTER_NULL, NULL);
	if (e == NULL)
		return NULL;
	d = ENTRY_DATA(e);
	memset(d, 0, sizeof(LeaseData));
	d->khash = khash;
	dlist_push_head(&Leases->lru, &d->lru);
	Leases->used++;
	return d;
}

/*
 * Give d a full TTL from now, unbinding it from any session; it becomes
 * the most recently renewed.
 */
static void
set_deadline(LeaseData *d, int64 ttl_ms, TimestampTz now)
{
	if (d->session_pid != 0 && d->deadline == 0)
		Leases->bound--;
	dlist_delete(&d->lru);
	dlist_push_head(&Leases->lru, &d->lru);
	d->session_pid = 0;
	d->session_ended_at = 0;
	d->ttl_ms = ttl_ms;
	d->deadline = TimestampTzPlusMilliseconds(now, ttl_ms);
	note_deadline(d->deadline);
}

/*
 * End this backend's session-bound leases: each gets one TTL from now.
 * A before_shmem_exit callback: runs at every orderly backend exit
 * (disconnect, FATAL, pg_terminate_backend), and takes only our lock.
 */
static void
end_session_leases(int pid, TimestampTz now)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &Leases->bound_list)
	{
		LeaseData  *d = dlist_container(LeaseData, lru, it.cur);

		if (d->session_pid == pid)
		{
			d->session_ended_at = now;
			d->deadline = TimestampTzPlusMilliseconds(now, d->ttl_ms);
			note_deadline(d->deadline);
			Leases->bound--;
			dlist_delete(&d->lru);
			dlist_push_head(&Leases->lru, &d->lru);
		}
	}
}

static void
session_exit_callback(int code, Datum arg)
{
	if (Leases == NULL)
		return;
	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	end_session_leases(MyProcPid, GetCurrentTimestamp());
	LWLockRelease(Leases->lock);
}

/* Drop every lease of table tid.  Caller holds the lock exclusively. */
static void
forget_table(int32 tid)
{
	dlist_mutable_iter it;

	dlist_foreach_modify(it, &Leases->lru)
	{
		LeaseData  *d = dlist_container(LeaseData, lru, it.cur);

		if (DATA_ENTRY(d)->tid == tid)
			remove_entry(d);
	}
	dlist_foreach_modify(it, &Leases->bound_list)
	{
		LeaseData  *d = dlist_container(LeaseData, lru, it.cur);

		if (DATA_ENTRY(d)->tid == tid)
			remove_entry(d);
	}
}

/*
 * Publication: a committed transaction's lease changes, in order.  Runs
 * in the commit callback: no allocation, no error.  The session callback
 * is registered before the transaction commits (see leases_apply's
 * caller), as registering may allocate.
 */
void
leases_apply(const LeaseChange *changes, int n, TimestampTz now)
{
	int			i;
	bool		adopt = false;

	if (n == 0)
		return;
	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		const LeaseChange *c = &changes[i];
		LeaseData  *d;
		bool		found;

		if (c->key == NULL)
		{
			/* the whole table: forgotten, or its rows to be adopted */
			if (c->grant)
			{
				Leases->adoption_gen++;
				adopt = true;
			}
			else
				forget_table(c->tid);
			continue;
		}
		if (!c->grant)
		{
			d = find(c->tid, c->khash, c->key);
			if (d)
				remove_entry(d);
			continue;
		}
		d = enter(c->tid, c->khash, c->key, true, &found);
		if (d == NULL)
			continue;
		if (!found)
			d->granted_at = now;
		set_deadline(d, c->ttl_ms, now);
		d->renewed_at = now;
		if (c->session && session_callback_set &&
			Leases->bound < registry_max_leases / 2)
		{
			d->session_pid = MyProcPid;
			d->deadline = 0;
			Leases->bound++;
			dlist_delete(&d->lru);
			dlist_push_head(&Leases->bound_list, &d->lru);
		}
		Leases->grants++;
		if (c->moved)
			Leases->ownership_moves++;
	}
	LWLockRelease(Leases->lock);

	/*
	 * The expiry may be idle (no ephemeral table at its last pass, next
	 * pass in 10 s): the adoption, and the table's expiry, start now.
	 */
	if (adopt)
		worker_wake_maintenance();
}

/*
 * Before a transaction that binds leases to this session commits: make
 * sure the session's end will end them.  May allocate (not in a commit
 * callback).
 */
void
leases_prepare_session(void)
{
	if (!session_callback_set)
	{
		before_shmem_exit(session_exit_callback, (Datum) 0);
		session_callback_set = true;
	}
}

/* A client renews a key: a full TTL from now if this node holds it. */
LeaseRenew
leases_renew(int32 tid, uint32 khash, const char *key, int64 ttl_ms,
			 TimestampTz now)
{
	char	   *keys[1] = {unconstify(char *, key)};
	LeaseRenew	r;

	leases_renew_many(tid, &khash, keys, 1, ttl_ms, now, &r);
	return r;
}

/*
 * leases_renew() for n keys of one table under one acquisition of the
 * lock (renew() of 100,000 keys took it 100,000 times); out[i] for
 * keys[i].  The caller bounds n: the lock is held throughout.
 */
void
leases_renew_many(int32 tid, const uint32 *khashes, char *const *keys, int n,
				  int64 ttl_ms, TimestampTz now, LeaseRenew *out)
{
	int			i;
	uint64		renewed = 0;

	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	for (i = 0; i < n; i++)
	{
		LeaseData  *d = find(tid, khashes[i], keys[i]);

		out[i] = LEASE_NOT_HELD;
		if (d)
		{
			set_deadline(d, ttl_ms, now);
			d->renewed_at = now;
			d->renewals++;
			renewed++;
			out[i] = LEASE_RENEWED;
		}
	}
	Leases->renewals += renewed;
	LWLockRelease(Leases->lock);
}

/*
 * A row this node owns that has no lease (after a start, an eviction, a
 * bulk change) gets a full TTL.  Never evicts: false when there is no
 * room.  A key that has a lease keeps it as it is.
 */
bool
leases_adopt(int32 tid, uint32 khash, const char *key, int64 ttl_ms,
			 TimestampTz now)
{
	LeaseData  *d;
	bool		found;

	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	d = enter(tid, khash, key, false, &found);
	if (d && !found)
	{
		d->granted_at = now;
		d->renewed_at = now;
		set_deadline(d, ttl_ms, now);
		Leases->grants++;
	}
	LWLockRelease(Leases->lock);
	return d != NULL;
}

/* Changes whenever rows this node owns may have no lease. */
uint64
leases_adoption_gen(void)
{
	uint64		gen;

	LWLockAcquire(Leases->lock, LW_SHARED);
	gen = Leases->adoption_gen;
	LWLockRelease(Leases->lock);
	return gen;
}

static int
pid_cmp(const void *a, const void *b)
{
	int			x = *(const int *) a;
	int			y = *(const int *) b;

	return x < y ? -1 : (x > y ? 1 : 0);
}

/*
 * End the bound leases of backends gone without their exit callback.  The
 * distinct pids are copied under the lock (at most one per backend slot),
 * looked for in the proc array without it.
 */
static void
end_gone_sessions(TimestampTz now)
{
	int			max = registry_proc_slots();
	int		   *pids = palloc(sizeof(int) * Max(max, 1));
	int			n = 0;
	int			i;
	dlist_iter	it;

	LWLockAcquire(Leases->lock, LW_SHARED);
	dlist_foreach(it, &Leases->bound_list)
	{
		LeaseData  *d = dlist_container(LeaseData, lru, it.cur);
		bool		seen = false;

		for (i = 0; i < n && !seen; i++)
			seen = (pids[i] == d->session_pid);
		if (!seen && n < max)
			pids[n++] = d->session_pid;
	}
	LWLockRelease(Leases->lock);
	qsort(pids, n, sizeof(int), pid_cmp);
	for (i = 0; i < n; i++)
	{
		if (BackendPidGetProc(pids[i]) != NULL)
			continue;
		LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
		end_session_leases(pids[i], now);
		LWLockRelease(Leases->lock);
	}
	pfree(pids);
}

/*
 * Up to max leases whose deadline has passed, copied into *out (palloc'd).
 * Cheap when none is due: next_due bounds every deadline from below, and
 * only renewals and grants (which only move deadlines later, or note the
 * earlier one) change them.  Bound sessions are looked for once a second.
 */
int
leases_collect_expired(TimestampTz now, int max, LeaseExpired **out)
{
	static TimestampTz last_session_check = 0;
	dlist_iter	it;
	int			n = 0;
	bool		check_sessions;
	TimestampTz next_due = 0;
	LeaseKey   *copy;
	char	   *reasons;
	Size		esz = entry_size();
	int			i;

	*out = NULL;
	LWLockAcquire(Leases->lock, LW_SHARED);
	check_sessions = Leases->bound > 0 &&
		TimestampDifferenceExceeds(last_session_check, now, SESSION_CHECK_MS);
	if (!check_sessions &&
		(Leases->used == 0 || Leases->next_due == 0 || Leases->next_due > now))
	{
		LWLockRelease(Leases->lock);
		return 0;
	}
	LWLockRelease(Leases->lock);

	if (check_sessions)
	{
		last_session_check = now;
		end_gone_sessions(now);
	}

	copy = palloc(esz * Max(max, 1));
	reasons = palloc(Max(max, 1));
	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	dlist_foreach(it, &Leases->lru)
	{
		LeaseData  *d = dlist_container(LeaseData, lru, it.cur);

		if (d->deadline > now)
		{
			if (next_due == 0 || d->deadline < next_due)
				next_due = d->deadline;
			continue;
		}
		/*
		 * Still due until the expiry deletes its row (or forgets it): a
		 * lease the cap held back must come up again at the next pass.
		 */
		if (next_due == 0 || d->deadline < next_due)
			next_due = d->deadline;
		if (n < max)
		{
			memcpy((char *) copy + (Size) n * esz, DATA_ENTRY(d), key_size);
			reasons[n] = d->session_ended_at != 0 ? LEASE_REASON_SESSION : LEASE_REASON_LEASE;
			n++;
		}
	}
	Leases->next_due = next_due;
	LWLockRelease(Leases->lock);

	if (n > 0)
	{
		*out = palloc(sizeof(LeaseExpired) * n);
		for (i = 0; i < n; i++)
		{
			LeaseKey   *k = (LeaseKey *) ((char *) copy + (Size) i * esz);

			(*out)[i].tid = k->tid;
			(*out)[i].key = pstrdup(k->key);
			(*out)[i].khash = keys_hash(k->key, strlen(k->key));
			(*out)[i].reason = reasons[i];
		}
	}
	pfree(copy);
	pfree(reasons);
	return n;
}

/* Whether the lease of a key is still there and still past its deadline. */
bool
leases_still_expired(int32 tid, uint32 khash, const char *key, TimestampTz now)
{
	LeaseData  *d;
	bool		expired;

	LWLockAcquire(Leases->lock, LW_SHARED);
	d = find(tid, khash, key);
	expired = d != NULL && d->deadline != 0 && d->deadline <= now;
	LWLockRelease(Leases->lock);
	return expired;
}

/*
 * A lease whose row could not be deleted (a foreign key refers to it, a
 * trigger fails): due again at until, not at every pass.
 */
void
leases_defer(int32 tid, uint32 khash, const char *key, TimestampTz until)
{
	LeaseData  *d;

	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	d = find(tid, khash, key);
	if (d && d->deadline != 0 && d->deadline < until)
	{
		d->deadline = until;
		note_deadline(until);
	}
	LWLockRelease(Leases->lock);
}

void
leases_forget(int32 tid, uint32 khash, const char *key)
{
	LeaseData  *d;

	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	d = find(tid, khash, key);
	if (d)
		remove_entry(d);
	LWLockRelease(Leases->lock);
}


/* Forget every lease (CREATE EXTENSION). */
void
leases_reset(void)
{
	dlist_mutable_iter it;

	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	dlist_foreach_modify(it, &Leases->lru)
		remove_entry(dlist_container(LeaseData, lru, it.cur));
	dlist_foreach_modify(it, &Leases->bound_list)
		remove_entry(dlist_container(LeaseData, lru, it.cur));
	Leases->used = 0;
	Leases->bound = 0;
	Leases->next_due = 0;
	Leases->adoption_gen++;
	LWLockRelease(Leases->lock);
}

void
leases_count(LeaseCounter which, uint64 n)
{
	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	Leases->counts[which] += n;
	LWLockRelease(Leases->lock);
}

void
leases_set_minority(bool minority)
{
	LWLockAcquire(Leases->lock, LW_EXCLUSIVE);
	Leases->minority = minority;
	LWLockRelease(Leases->lock);
}

void
leases_counters(LeaseCounters *out)
{
	LWLockAcquire(Leases->lock, LW_SHARED);
	out->capacity = registry_max_leases;
	out->used = Leases->used;
	out->evictions = Leases->evictions;
	out->grants = Leases->grants;
	out->renewals = Leases->renewals;
	out->ownership_moves = Leases->ownership_moves;
	memcpy(out->counts, Leases->counts, sizeof(out->counts));
	out->minority = Leases->minority;
	LWLockRelease(Leases->lock);
}

static int
copy_info(dlist_head *list, LeaseInfo *out, char *keys, int i, int max)
{
	dlist_iter	it;

	dlist_foreach(it, list)
	{
		LeaseData  *d = dlist_container(LeaseData, lru, it.cur);

		if (i >= max)
			break;
		strlcpy(keys + (Size) i * (registry_max_key_length + 1),
				DATA_ENTRY(d)->key, registry_max_key_length + 1);
		out[i].tid = DATA_ENTRY(d)->tid;
		out[i].granted_at = d->granted_at;
		out[i].renewed_at = d->renewed_at;
		out[i].deadline = d->deadline;
		out[i].renewals = d->renewals;
		out[i].session_pid = d->session_pid;
		out[i].session_ended_at = d->session_ended_at;
		i++;
	}
	return i;
}

/*
 * Every lease, copied (registry.leases): the bound ones, then the others
 * from the most recently renewed.  Allocated before taking the lock, for
 * as many as there were a moment before; leases granted in between are
 * left out.
 */
LeaseInfo *
leases_snapshot(int *n)
{
	LeaseInfo  *out;
	char	   *keys;
	int64		max;
	int			i;
	int			j;

	LWLockAcquire(Leases->lock, LW_SHARED);
	max = Leases->used;
	LWLockRelease(Leases->lock);
	out = MemoryContextAllocHuge(CurrentMemoryContext,
								 sizeof(LeaseInfo) * Max(max, 1));
	keys = MemoryContextAllocHuge(CurrentMemoryContext,
								  (Size) (registry_max_key_length + 1) * Max(max, 1));
	LWLockAcquire(Leases->lock, LW_SHARED);
	i = copy_info(&Leases->bound_list, out, keys, 0, (int) max);
	i = copy_info(&Leases->lru, out, keys, i, (int) max);
	LWLockRelease(Leases->lock);
	for (j = 0; j < i; j++)
		out[j].key = keys + (Size) j * (registry_max_key_length + 1);
	*n = i;
	return out;
}
