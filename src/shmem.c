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
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "registry.h"
#include "shmem.h"

RegistryShared *RegistryState = NULL;
RegTableSlot *RegistryTables = NULL;
uint64	   *RegistryDigests = NULL;
char	   *RegistryOrigins = NULL;
char	   *RegistryChangeLog = NULL;
PeerStatus *RegistryPeers = NULL;
pg_atomic_uint32 *RegistryPublishing = NULL;

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
peers_size(void)
{
	return mul_size(registry_max_origins, sizeof(PeerStatus));
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
	size = add_size(size, MAXALIGN(peers_size()));
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
	RegistryPeers = ShmemInitStruct("registry peers", peers_size(), &found);
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
		RegistryState->peer_lock = &locks[5].lock;
		ConditionVariableInit(&RegistryState->sync_cv);
		ConditionVariableInit(&RegistryState->changes_cv);
		memset(RegistryPeers, 0, peers_size());
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

		/* origin 0 is always this node */
		strlcpy(RegistryOrigins, registry_node_name, REGISTRY_NAME_LEN);
		RegistryState->norigins = 1;

		changelog_init();
	}

	hlc_shmem_init(found_any);
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

/*
 * Small integer for an origin name; names are never forgotten within one
 * server lifetime, so the ids are stable and backends may cache them.
 * Called only where ERROR is allowed (never at commit).
 */
int16
origin_id(const char *name)
{
	static char cached_name[REGISTRY_NAME_LEN];
	static int16 cached_id = -1;
	int			i;
	int			n;

	if (cached_id >= 0 && strcmp(cached_name, name) == 0)
		return cached_id;

	LWLockAcquire(RegistryState->meta_lock, LW_SHARED);
	n = RegistryState->norigins;
	for (i = 0; i < n; i++)
	{
		if (strcmp(RegistryOrigins + (Size) i * REGISTRY_NAME_LEN, name) == 0)
			break;
	}
	LWLockRelease(RegistryState->meta_lock);

	if (i == n)
	{
		LWLockAcquire(RegistryState->meta_lock, LW_EXCLUSIVE);
		n = RegistryState->norigins;
		for (i = 0; i < n; i++)
		{
			if (strcmp(RegistryOrigins + (Size) i * REGISTRY_NAME_LEN, name) == 0)
				break;
		}
		if (i == n)
		{
			if (n >= registry_max_origins)
			{
				LWLockRelease(RegistryState->meta_lock);
				ereport(ERROR,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("too many origin nodes"),
						 errdetail("This node already knows %d origin nodes.", n),
						 errhint("Raise registry.max_nodes and restart.")));
			}
			strlcpy(RegistryOrigins + (Size) n * REGISTRY_NAME_LEN, name,
					REGISTRY_NAME_LEN);
			RegistryState->norigins = n + 1;
		}
		LWLockRelease(RegistryState->meta_lock);
	}

	strlcpy(cached_name, name, sizeof(cached_name));
	cached_id = (int16) i;
	return (int16) i;
}

/*
 * Origins are append-only, so reading a name without the lock is safe once
 * its id has been seen.
 */
const char *
origin_name(int16 id)
{
	if (id < 0 || id >= registry_max_origins)
		return "?";
	return RegistryOrigins + (Size) id * REGISTRY_NAME_LEN;
}
