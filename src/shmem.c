/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  The layout of the registry's shared memory: its total size, the
 *	  named LWLock tranche and which owner gets which lock, the
 *	  initialisation of every owner at server start.  (The reset at
 *	  CREATE EXTENSION is registry._reset(), registration.c.)
 *
 * The owners (layer 3: node.c, origins.c, acceptor.c, worker_slots.c,
 * changelog.c, digest.c, peer_status.c, publishing.c, leases.c, acks.c; hlc.c
 * in layer 2)
 * each allocate and initialise their own structure; this file only sums
 * their sizes and calls them, in an order that respects who depends on
 * whom (origins before the structures that register origin markers).  init.c installs the hooks that call
 * shmem_request_space() and shmem_startup_owners().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"

#include "acceptor.h"
#include "acks.h"
#include "changelog.h"
#include "digest.h"
#include "leases.h"
#include "node.h"
#include "origins.h"
#include "peer_status.h"
#include "publishing.h"
#include "registry.h"
#include "shmem.h"
#include "worker_slots.h"

/* The whole of it, also shown by registry.node. */
Size
shmem_total_size(void)
{
	Size		size = 0;

	size = add_size(size, node_shmem_size());
	size = add_size(size, origins_shmem_size());
	size = add_size(size, worker_slots_shmem_size());
	size = add_size(size, MAXALIGN(hlc_shmem_size()));
	size = add_size(size, acceptor_shmem_size());
	size = add_size(size, MAXALIGN(changelog_shmem_size()));
	size = add_size(size, digest_shmem_size());
	size = add_size(size, MAXALIGN(publishing_shmem_size()));
	size = add_size(size, MAXALIGN(peer_status_shmem_size()));
	size = add_size(size, leases_shmem_size());
	size = add_size(size, acks_shmem_size());
	return size;
}

/* From the shmem_request_hook. */
void
shmem_request_space(void)
{
	RequestAddinShmemSpace(shmem_total_size());
	RequestNamedLWLockTranche("registry", REGISTRY_LWLOCKS);
}

/*
 * From the shmem_startup_hook: allocate (or, in a process that attaches
 * later, find) every structure.  Each owner initialises its own the first
 * time only.
 */
void
shmem_startup_owners(void)
{
	LWLockPadded *locks = GetNamedLWLockTranche("registry");

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	node_shmem_init();
	origins_shmem_init(&locks[REGISTRY_LOCK_META].lock);
	worker_slots_shmem_init();
	hlc_shmem_init(&locks[REGISTRY_LOCK_LEASE].lock);
	/* after origins: these register their origin markers there */
	acceptor_shmem_init(&locks[REGISTRY_LOCK_ACCEPTOR].lock);
	changelog_shmem_init(&locks[REGISTRY_LOCK_CHANGELOG].lock);
	digest_shmem_init(&locks[REGISTRY_LOCK_META].lock,
					  &locks[REGISTRY_LOCK_DIGEST].lock);
	publishing_shmem_init();
	peer_status_shmem_init(&locks[REGISTRY_LOCK_PEER].lock);
	leases_shmem_init(&locks[REGISTRY_LOCK_ROW_LEASES].lock);
	acks_shmem_init();

	LWLockRelease(AddinShmemInitLock);
	registry_shmem_attached = true;
}
