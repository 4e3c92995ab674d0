/*-------------------------------------------------------------------------
 *
 * origins.c
 *	  The names of the nodes versions come from, numbered so that change log
 * entries and acceptors hold a 2-byte number instead of a name.  Slot 0 is
 * this node, for good; a free slot has an empty name.
 *
 * A number is in use while a change log entry or an acceptor holds it, or
 * while a transaction that recorded a change with it has not yet
 * published (or dropped) the change: such a transaction pins the number,
 * in a bitmap of its own process.  When every slot is taken, a new name
 * makes origins_id() reclaim the slots nothing uses (invented origins a
 * peer or an admin sent cannot fill the table for good).  If none is free
 * even then, the change is recorded with ORIGIN_UNKNOWN: its row and
 * version are stored and replicated exactly; only the change log,
 * acceptors and notifications show no origin for it (counted in
 * registry.node).
 *
 * Lock rules: names are written under meta_lock exclusive (a new name, a
 * reclaim); found under meta_lock shared, which a process also holds
 * while it sets its own pin.  A process clears its pins without a lock,
 * after its publication has released the locks it took.  A reclaim reads
 * the pins first and then the acceptors and the change log, so it never
 * misses a number that is passing from a pin to an entry.  A number held
 * by a change log entry or an acceptor keeps its name while the entry is
 * there: a reader holding changelog_lock or acceptor_lock, or meta_lock,
 * may read the names of the numbers it sees (origins_hold_names()).
 *
 * The owners of the acceptors (acceptor.c) and of the change log
 * (changelog.c) sit beside this file in layer 3; they register an
 * origins_mark_hook at initialisation, so that a reclaim asks them which
 * numbers they hold without this file calling sideways into them.  The
 * hooks run in registration order (acceptors, then the change log), with
 * meta_lock held exclusively, and take their own locks shared.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/proc.h"
#include "storage/shmem.h"

#include "registry.h"
#include "origins.h"

typedef struct OriginsShared
{
	LWLock	   *lock;			/* meta_lock */
	int			norigins;		/* slots ever used: names are in [0, norigins) */
	uint64		reclaimed;		/* slots freed for new names */
	uint64		unknown;		/* changes recorded without their origin */
} OriginsShared;

#define ORIGINS_MAX_MARKERS	4

static OriginsShared *Origins = NULL;
static char *OriginNames = NULL;	/* [registry_max_origins][REGISTRY_NAME_LEN] */
static uint8 *OriginPins = NULL;	/* [registry_proc_slots()][origin_pin_bytes()] */
static origins_mark_hook markers[ORIGINS_MAX_MARKERS];
static int	nmarkers = 0;

static bool have_pins = false;

static Size
origin_pin_bytes(void)
{
	return (Size) (registry_max_origins + 7) / 8;
}


Size
origins_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(OriginsShared));

	size = add_size(size, MAXALIGN(mul_size(registry_max_origins, REGISTRY_NAME_LEN)));
	size = add_size(size, MAXALIGN(mul_size(registry_proc_slots(), origin_pin_bytes())));
	return size;
}

/*
 * Called by the shared memory startup hook, holding AddinShmemInitLock.
 * lock guards the names (the lock rules above).
 */
void
origins_shmem_init(LWLock *lock)
{
	bool		found;

	Origins = ShmemInitStruct("registry origin state", sizeof(OriginsShared),
							  &found);
	OriginNames = ShmemInitStruct("registry origins",
								  mul_size(registry_max_origins, REGISTRY_NAME_LEN),
								  &found);
	OriginPins = ShmemInitStruct("registry origin pins",
								 mul_size(registry_proc_slots(), origin_pin_bytes()),
								 &found);
	if (found)
		return;
	memset(Origins, 0, sizeof(OriginsShared));
	Origins->lock = lock;
	memset(OriginNames, 0, mul_size(registry_max_origins, REGISTRY_NAME_LEN));
	memset(OriginPins, 0, mul_size(registry_proc_slots(), origin_pin_bytes()));

	/* origin 0 is always this node */
	strlcpy(OriginNames, registry_node_name, REGISTRY_NAME_LEN);
	Origins->norigins = 1;
}

/*
 * A structure that holds origin numbers: its marker runs at every
 * reclaim.  Called at initialisation; registering twice is harmless.
 */
void
origins_register_marker(origins_mark_hook mark)
{
	int			i;

	for (i = 0; i < nmarkers; i++)
		if (markers[i] == mark)
			return;
	if (nmarkers >= ORIGINS_MAX_MARKERS)
		elog(FATAL, "registry: too many origin markers");
	markers[nmarkers++] = mark;
}

static uint8 *
my_pins(void)
{
	return OriginPins + (Size) MyProc->pgprocno * origin_pin_bytes();
}

static char *
origin_slot(int i)
{
	return OriginNames + (Size) i * REGISTRY_NAME_LEN;
}

/* The slot of name, or -1.  Caller holds meta_lock. */
static int
origin_find(const char *name)
{
	int			i;

	for (i = 0; i < Origins->norigins; i++)
		if (strcmp(origin_slot(i), name) == 0)
			return i;
	return -1;
}

/* A free slot, or -1.  Caller holds meta_lock exclusively. */
static int
origin_free_slot(void)
{
	int			i;

	for (i = 1; i < Origins->norigins; i++)
		if (origin_slot(i)[0] == '\0')
			return i;
	return Origins->norigins < registry_max_origins ?
		Origins->norigins : -1;
}

/*
 * Free the slots nothing uses: no pin, no acceptor, no change log entry.
 * Caller holds meta_lock exclusively.
 */
static void
origins_reclaim(void)
{
	bool	   *used = palloc0(sizeof(bool) * registry_max_origins);
	Size		nbytes = origin_pin_bytes();
	int			nprocs = registry_proc_slots();
	int			i;
	int			freed = 0;

	used[0] = true;
	/* pins first: a number leaves a pin only once it is in an entry */
	pg_memory_barrier();
	for (i = 0; i < nprocs; i++)
	{
		uint8	   *pins = OriginPins + (Size) i * nbytes;
		int			b;

		for (b = 0; b < registry_max_origins; b++)
			if (pins[b / 8] & (1 << (b % 8)))
				used[b] = true;
	}
	pg_memory_barrier();
	for (i = 0; i < nmarkers; i++)
		markers[i] (used);
	for (i = 1; i < Origins->norigins; i++)
	{
		if (!used[i] && origin_slot(i)[0] != '\0')
		{
			origin_slot(i)[0] = '\0';
			freed++;
		}
	}
	Origins->reclaimed += freed;
	pfree(used);
}

static void
origin_pin(int id)
{
	my_pins()[id / 8] |= (uint8) (1 << (id % 8));
	have_pins = true;
}

/*
 * The number of an origin name, pinned until this transaction ends; a
 * slot is taken for a new name, reclaiming unused ones if need be.
 * ORIGIN_UNKNOWN if none is free.  Called where ERROR is allowed (never
 * at commit).
 */
int16
origins_id(const char *name)
{
	static char cached_name[REGISTRY_NAME_LEN];
	static int16 cached_id = -1;
	int			i;

	if (strcmp(name, registry_node_name) == 0)
		return 0;
	/* pinned in this transaction: the number is still this name's */
	if (cached_id > 0 && have_pins &&
		(my_pins()[cached_id / 8] & (1 << (cached_id % 8))) &&
		strcmp(cached_name, name) == 0)
		return cached_id;

	LWLockAcquire(Origins->lock, LW_SHARED);
	i = origin_find(name);
	if (i >= 0)
		origin_pin(i);
	LWLockRelease(Origins->lock);

	if (i < 0)
	{
		LWLockAcquire(Origins->lock, LW_EXCLUSIVE);
		i = origin_find(name);
		if (i < 0)
		{
			i = origin_free_slot();
			if (i < 0)
			{
				origins_reclaim();
				i = origin_free_slot();
			}
			if (i >= 0)
			{
				strlcpy(origin_slot(i), name, REGISTRY_NAME_LEN);
				if (i >= Origins->norigins)
					Origins->norigins = i + 1;
			}
			else
				Origins->unknown++;
		}
		if (i >= 0)
			origin_pin(i);
		LWLockRelease(Origins->lock);
	}
	if (i < 0)
		return ORIGIN_UNKNOWN;
	strlcpy(cached_name, name, sizeof(cached_name));
	cached_id = (int16) i;
	return (int16) i;
}

/*
 * The number name has now, or -1: neither pinned nor taken.  Only a hint
 * (the number may be reclaimed and given to another name later); for the
 * long poll's wake-up filter (changelog.c), which checks names anyway.
 */
int16
origins_lookup(const char *name)
{
	int			i;

	if (strcmp(name, registry_node_name) == 0)
		return 0;
	LWLockAcquire(Origins->lock, LW_SHARED);
	i = origin_find(name);
	LWLockRelease(Origins->lock);
	return (int16) i;
}

/*
 * At the end of a transaction, after its changes were published or
 * dropped: the numbers it used are no longer held by it.  Cannot fail.
 */
void
origins_unpin(void)
{
	if (!have_pins)
		return;
	pg_write_barrier();
	memset(my_pins(), 0, origin_pin_bytes());
	have_pins = false;
}

/*
 * The name of an origin number seen in a change log entry or an acceptor
 * (see the lock rules above); NULL for ORIGIN_UNKNOWN.
 */
const char *
origins_name(int16 id)
{
	if (id < 0 || id >= registry_max_origins)
		return NULL;
	return origin_slot(id);
}

/* Slots holding a name.  Caller holds the lock. */
static int
origins_used(void)
{
	int			i;
	int			n = 0;

	for (i = 0; i < Origins->norigins; i++)
		if (origin_slot(i)[0] != '\0')
			n++;
	return n;
}

/*
 * Keep the names of the numbers the caller sees valid until
 * origins_release_names() (a reader that copies entries out of the change
 * log or the acceptors and reads their names after letting go of their
 * locks).  Lock order: before changelog_lock and acceptor_lock.
 */
void
origins_hold_names(void)
{
	LWLockAcquire(Origins->lock, LW_SHARED);
}

void
origins_release_names(void)
{
	LWLockRelease(Origins->lock);
}

/* For registry.node: slots holding a name, reclaimed, unknown. */
void
origins_counters(int *used, uint64 *reclaimed, uint64 *unknown)
{
	LWLockAcquire(Origins->lock, LW_SHARED);
	*used = origins_used();
	*reclaimed = Origins->reclaimed;
	*unknown = Origins->unknown;
	LWLockRelease(Origins->lock);
}
