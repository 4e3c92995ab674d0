/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  Layout of the registry's shared memory.
 *
 * Everything here is a cache or an index of what is durable in tables
 * (the registered tables' version columns, registry.tombstones); after a
 * restart it starts empty, with a new
 * epoch, and the maintenance worker rebuilds the digests from disk.  All
 * sizes are fixed at server start by the registry.* parameters.
 *
 * This header is the layout: the named LWLock tranche and who gets which
 * lock, the total size, the initialisation of every owner at server start
 * (shmem.c), and the reset at CREATE EXTENSION.  Each shared structure is
 * defined, initialised and locked by its owner, whose opening comment has
 * its lock rules: node.c (state), origins.c, acceptor.c, hlc.c,
 * worker_slots.c, changelog.c (and the epoch), digest.c, publishing.c,
 * peer_status.c.  Only shmem.c, init.c and registration.c (the reset)
 * include this header.
 *
 * Lock order, when more than one is held: meta, acceptor, changelog,
 * digest.  Commit-time publication takes them one after another, never
 * nested.  meta_lock guards the origin names (origins.c) and the table
 * slots (digest.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_SHMEM_H
#define REGISTRY_SHMEM_H

#include "storage/lwlock.h"

/* The named LWLock tranche "registry": who gets which */
#define REGISTRY_LOCK_META		0	/* origins.c; table slots (digest.c) */
#define REGISTRY_LOCK_CHANGELOG 1
#define REGISTRY_LOCK_ACCEPTOR	2	/* acceptor.c */
#define REGISTRY_LOCK_DIGEST	3
#define REGISTRY_LOCK_LEASE		4	/* hlc.c */
#define REGISTRY_LOCK_PEER		5	/* peer status array */
#define REGISTRY_LOCK_ROW_LEASES 6	/* leases.c */
#define REGISTRY_LWLOCKS		7

/* layout (shmem.c) */
extern Size shmem_total_size(void);
extern void shmem_request_space(void);
extern void shmem_startup_owners(void);

#endif							/* REGISTRY_SHMEM_H */
