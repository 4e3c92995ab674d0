/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  Sizing and initialisation of the registry's shared memory, and the
 *	  table of origin node names that the other shared structures refer to
 *	  by a small integer.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "registry.h"
#include "peer_status.h"
#include "shmem.h"

RegistryShared *RegistryState = NULL;
RegTableSlot *RegistryTables = NULL;
uint64	   *RegistryDigests = NULL;
char	   *RegistryOrigins = NULL;
char	   *RegistryChangeLog = NULL;
pg_atomic_uint32 *RegistryPublishing = NULL;
static uint8 *OriginPins = NULL;	/* [publishing_slots()][origin_pin_bytes()] */

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

#define REGISTRY_LWLOCKS 6

static Size
tables_size(void)
{
	return mul_size(registry_max_tables, sizeof(RegTableSlot));
}

static Size
digests_size(void)
{
	return mul_size(mul_size(registry_max_tables, registry_digest_buckets),
					sizeof(uint64));
}

static Size
origins_size(void)
{
	return mul_size(registry_max_origins, REGISTRY_NAME_LEN);
}

static Size
pins_size(void)
{
	return mul_size(publishing_slots(), origin_pin_bytes());
}

static Size
changelog_size(void)
{
	return mul_size(registry_change_log_size, changelog_entry_size());
}

Size
registry_shmem_total_size(void)
{
	Size		size = MAXALIGN(sizeof(RegistryShared));

	size = add_size(size, MAXALIGN(tables_size()));
	size = add_size(size, MAXALIGN(digests_size()));
	size = add_size(size, MAXALIGN(origins_size()));
	size = add_size(size, MAXALIGN(changelog_size()));
	size = add_size(size, MAXALIGN(peer_status_shmem_size()));
	size = add_size(size, MAXALIGN(pins_size()));
	size = add_size(size, MAXALIGN(mul_size(publishing_slots(), 2 * sizeof(pg_atomic_uint32))));
	size = add_size(size, MAXALIGN(hlc_shmem_size()));
	size = add_size(size, acceptor_shmem_size());
	return size;
}

static void
registry_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(registry_shmem_total_size());
	RequestNamedLWLockTranche("registry", REGISTRY_LWLOCKS);
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

static void
registry_shmem_startup(void)
{
	bool		found;
	bool		found_any = false;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	RegistryState = ShmemInitStruct("registry state",
									sizeof(RegistryShared), &found);
	found_any = found;
	RegistryTables = ShmemInitStruct("registry tables", tables_size(), &found);
	RegistryDigests = ShmemInitStruct("registry digests", digests_size(), &found);
	RegistryOrigins = ShmemInitStruct("registry origins", origins_size(), &found);
	RegistryChangeLog = ShmemInitStruct("registry change log",
										changelog_size(), &found);
	OriginPins = ShmemInitStruct("registry origin pins", pins_size(), &found);
	RegistryPublishing = ShmemInitStruct("registry publishing",
										 mul_size(publishing_slots(), 2 * sizeof(pg_atomic_uint32)),
										 &found);

	if (!found_any)
	{
		LWLockPadded *locks = GetNamedLWLockTranche("registry");

		memset(RegistryState, 0, sizeof(RegistryShared));
		RegistryState->meta_lock = &locks[0].lock;
		RegistryState->changelog_lock = &locks[1].lock;
		RegistryState->acceptor_lock = &locks[2].lock;
		RegistryState->digest_lock = &locks[3].lock;
		RegistryState->lease_lock = &locks[4].lock;
		ConditionVariableInit(&RegistryState->changes_cv);
		RegistryState->epoch = new_epoch();
		RegistryState->started_at = GetCurrentTimestamp();
		pg_atomic_init_u32(&RegistryState->state, REG_STATE_STARTING);
		pg_atomic_init_u32(&RegistryState->notify_wanted, 1);
		pg_atomic_init_u32(&RegistryState->publishing, 0);
		publishing_init();
		SpinLockInit(&RegistryState->mutex);
		dlist_init(&RegistryState->acc_lru);

		memset(RegistryTables, 0, tables_size());
		memset(RegistryDigests, 0, digests_size());
		memset(RegistryOrigins, 0, origins_size());
		memset(OriginPins, 0, pins_size());

		/* origin 0 is always this node */
		strlcpy(RegistryOrigins, registry_node_name, REGISTRY_NAME_LEN);
		RegistryState->norigins = 1;

		changelog_init();
	}

	hlc_shmem_init(found_any);
	peer_status_shmem_init(&GetNamedLWLockTranche("registry")[5].lock, found_any);
	acceptor_shmem_init();

	LWLockRelease(AddinShmemInitLock);
}

void
registry_shmem_install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = registry_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = registry_shmem_startup;
}

/*
 * CREATE EXTENSION starts from nothing: whatever a dropped incarnation of
 * the extension left in shared memory is discarded, and a new epoch tells
 * readers of the change log that earlier sequence numbers mean nothing.
 */
void
registry_reset_shared_state(void)
{
	LWLockAcquire(RegistryState->meta_lock, LW_EXCLUSIVE);
	LWLockAcquire(RegistryState->acceptor_lock, LW_EXCLUSIVE);
	LWLockAcquire(RegistryState->changelog_lock, LW_EXCLUSIVE);
	LWLockAcquire(RegistryState->digest_lock, LW_EXCLUSIVE);

	memset(RegistryTables, 0, tables_size());
	memset(RegistryDigests, 0, digests_size());
	RegistryState->epoch = new_epoch();
	RegistryState->cl_first_seq = RegistryState->cl_last_seq + 1;
	acceptor_reset();
	pg_atomic_write_u32(&RegistryState->state, REG_STATE_READY);
	RegistryState->ready_at = GetCurrentTimestamp();

	LWLockRelease(RegistryState->digest_lock);
	LWLockRelease(RegistryState->changelog_lock);
	LWLockRelease(RegistryState->acceptor_lock);
	LWLockRelease(RegistryState->meta_lock);

	SpinLockAcquire(&RegistryState->mutex);
	RegistryState->notified_seq = RegistryState->cl_last_seq;
	SpinLockRelease(&RegistryState->mutex);
}

/* ---- origins ----
 *
 * The names of the nodes versions come from, numbered so that change log
 * entries and acceptors hold a 2-byte number instead of a name.  Slot 0 is
 * this node, for good; a free slot has an empty name.
 *
 * A number is in use while a change log entry or an acceptor holds it, or
 * while a transaction that recorded a change with it has not yet
 * published (or dropped) the change: such a transaction pins the number,
 * in a bitmap of its own process.  When every slot is taken, a new name
 * makes origin_id() reclaim the slots nothing uses (invented origins a
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
 * may read the names of the numbers it sees.
 */

static bool have_pins = false;

Size
origin_pin_bytes(void)
{
	return (Size) (registry_max_origins + 7) / 8;
}

static uint8 *
my_pins(void)
{
	return OriginPins + (Size) MyProc->pgprocno * origin_pin_bytes();
}

static char *
origin_slot(int i)
{
	return RegistryOrigins + (Size) i * REGISTRY_NAME_LEN;
}

/* The slot of name, or -1.  Caller holds meta_lock. */
static int
origin_find(const char *name)
{
	int			i;

	for (i = 0; i < RegistryState->norigins; i++)
		if (strcmp(origin_slot(i), name) == 0)
			return i;
	return -1;
}

/* A free slot, or -1.  Caller holds meta_lock exclusively. */
static int
origin_free_slot(void)
{
	int			i;

	for (i = 1; i < RegistryState->norigins; i++)
		if (origin_slot(i)[0] == '\0')
			return i;
	return RegistryState->norigins < registry_max_origins ?
		RegistryState->norigins : -1;
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
	int			nprocs = publishing_slots();
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
	acceptor_mark_origins(used);
	changelog_mark_origins(used);
	for (i = 1; i < RegistryState->norigins; i++)
	{
		if (!used[i] && origin_slot(i)[0] != '\0')
		{
			origin_slot(i)[0] = '\0';
			freed++;
		}
	}
	RegistryState->origins_reclaimed += freed;
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
origin_id(const char *name)
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

	LWLockAcquire(RegistryState->meta_lock, LW_SHARED);
	i = origin_find(name);
	if (i >= 0)
		origin_pin(i);
	LWLockRelease(RegistryState->meta_lock);

	if (i < 0)
	{
		LWLockAcquire(RegistryState->meta_lock, LW_EXCLUSIVE);
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
				if (i >= RegistryState->norigins)
					RegistryState->norigins = i + 1;
			}
			else
				RegistryState->origins_unknown++;
		}
		if (i >= 0)
			origin_pin(i);
		LWLockRelease(RegistryState->meta_lock);
	}
	if (i < 0)
		return ORIGIN_UNKNOWN;
	strlcpy(cached_name, name, sizeof(cached_name));
	cached_id = (int16) i;
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
origin_name(int16 id)
{
	if (id < 0 || id >= registry_max_origins)
		return NULL;
	return origin_slot(id);
}

/* Slots holding a name.  Caller holds meta_lock. */
int
origins_used(void)
{
	int			i;
	int			n = 0;

	for (i = 0; i < RegistryState->norigins; i++)
		if (origin_slot(i)[0] != '\0')
			n++;
	return n;
}
