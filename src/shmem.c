/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  The layout of the registry's shared memory: its total size, the
 *	  named LWLock tranche and which owner gets which lock, the
 *	  initialisation of every owner at server start, and the reset of all
 *	  of them at CREATE EXTENSION.
 *
 * The owners (layer 4: node.c, origins.c, acceptor.c, worker_slots.c,
 * hlc.c in layer 2, and the change log, table slots and digests, peer
 * status and publication order) each allocate and initialise their own
 * structure; this file only sums their sizes and calls them, in an order
 * that respects who depends on whom (origins before the structures that
 * register origin markers).  init.c installs the hooks that call
 * registry_shmem_request() and registry_shmem_startup().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

#include "acceptor.h"
#include "node.h"
#include "origins.h"
#include "registry.h"
#include "shmem.h"
#include "worker_slots.h"

RegistryShared *RegistryState = NULL;
RegTableSlot *RegistryTables = NULL;
uint64	   *RegistryDigests = NULL;
char	   *RegistryChangeLog = NULL;
PeerStatus *RegistryPeers = NULL;
pg_atomic_uint32 *RegistryPublishing = NULL;

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
peers_size(void)
{
	return mul_size(registry_max_origins, sizeof(PeerStatus));
}

static Size
changelog_size(void)
{
	return mul_size(registry_change_log_size, changelog_entry_size());
}

static Size
publishing_size(void)
{
	return mul_size(publishing_slots(), 2 * sizeof(pg_atomic_uint32));
}

/* The whole of it, also shown by registry.node. */
Size
registry_shmem_total_size(void)
{
	Size		size = MAXALIGN(sizeof(RegistryShared));

	size = add_size(size, MAXALIGN(tables_size()));
	size = add_size(size, MAXALIGN(digests_size()));
	size = add_size(size, MAXALIGN(changelog_size()));
	size = add_size(size, MAXALIGN(peers_size()));
	size = add_size(size, MAXALIGN(publishing_size()));
	size = add_size(size, node_shmem_size());
	size = add_size(size, origins_shmem_size());
	size = add_size(size, worker_slots_shmem_size());
	size = add_size(size, MAXALIGN(hlc_shmem_size()));
	size = add_size(size, acceptor_shmem_size());
	return size;
}

/* From the shmem_request_hook. */
void
registry_shmem_request(void)
{
	RequestAddinShmemSpace(registry_shmem_total_size());
	RequestNamedLWLockTranche("registry", REGISTRY_LWLOCKS);
}

/*
 * From the shmem_startup_hook: allocate (or, in a process that attaches
 * later, find) every structure.  Each owner initialises its own the first
 * time only.
 */
void
registry_shmem_startup(void)
{
	bool		found;
	bool		found_state;
	LWLockPadded *locks;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	RegistryState = ShmemInitStruct("registry state",
									sizeof(RegistryShared), &found_state);
	RegistryTables = ShmemInitStruct("registry tables", tables_size(), &found);
	RegistryDigests = ShmemInitStruct("registry digests", digests_size(), &found);
	RegistryChangeLog = ShmemInitStruct("registry change log",
										changelog_size(), &found);
	RegistryPeers = ShmemInitStruct("registry peers", peers_size(), &found);
	RegistryPublishing = ShmemInitStruct("registry publishing",
										 publishing_size(), &found);

	if (!found_state)
	{
		locks = GetNamedLWLockTranche("registry");

		memset(RegistryState, 0, sizeof(RegistryShared));
		RegistryState->meta_lock = &locks[REGISTRY_LOCK_META].lock;
		RegistryState->changelog_lock = &locks[REGISTRY_LOCK_CHANGELOG].lock;
		RegistryState->acceptor_lock = &locks[REGISTRY_LOCK_ACCEPTOR].lock;
		RegistryState->digest_lock = &locks[REGISTRY_LOCK_DIGEST].lock;
		RegistryState->lease_lock = &locks[REGISTRY_LOCK_LEASE].lock;
		RegistryState->peer_lock = &locks[REGISTRY_LOCK_PEER].lock;
		ConditionVariableInit(&RegistryState->sync_cv);
		ConditionVariableInit(&RegistryState->changes_cv);
		memset(RegistryPeers, 0, peers_size());
		pg_atomic_init_u32(&RegistryState->notify_wanted, 1);
		pg_atomic_init_u32(&RegistryState->publishing, 0);
		publishing_init();
		SpinLockInit(&RegistryState->mutex);

		memset(RegistryTables, 0, tables_size());
		memset(RegistryDigests, 0, digests_size());

		changelog_init();
	}

	node_shmem_init();
	origins_shmem_init(RegistryState->meta_lock);
	worker_slots_shmem_init();
	hlc_shmem_init(RegistryState->lease_lock);
	acceptor_shmem_init(RegistryState->acceptor_lock);
	/* after the acceptors': a reclaim looks at them first */
	origins_register_marker(changelog_mark_origins);

	LWLockRelease(AddinShmemInitLock);
	registry_shmem_attached = true;
}

/*
 * CREATE EXTENSION starts from nothing: whatever a dropped incarnation of
 * the extension left in shared memory is discarded, and a new epoch tells
 * readers of the change log that earlier sequence numbers mean nothing.
 * Every owner's lock is held (in the lock order) while the owners reset,
 * so that no reader sees a new epoch beside an old change log.
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
	RegistryState->cl_first_seq = RegistryState->cl_last_seq + 1;
	acceptor_reset();
	node_reset();

	LWLockRelease(RegistryState->digest_lock);
	LWLockRelease(RegistryState->changelog_lock);
	LWLockRelease(RegistryState->acceptor_lock);
	LWLockRelease(RegistryState->meta_lock);

	SpinLockAcquire(&RegistryState->mutex);
	RegistryState->notified_seq = RegistryState->cl_last_seq;
	SpinLockRelease(&RegistryState->mutex);
}
