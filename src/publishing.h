/*-------------------------------------------------------------------------
 *
 * publishing.h
 *	  Keeping publications in commit order (publishing.c): committing
 *	  transactions announce themselves until they have published, and a
 *	  writer of a key last written by one of them waits for it.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_PUBLISHING_H
#define REGISTRY_PUBLISHING_H

#include "postgres.h"

#include "utils/snapshot.h"

extern Size publishing_shmem_size(void);
extern void publishing_shmem_init(void);
extern void publishing_begin(void);
extern void publishing_end(void);
extern void publishing_wait(TransactionId xid);

/* cuts: a snapshot and a change log seq that agree (watch.c) */
extern bool publishing_cut(int wait_ms, Snapshot *snap, uint64 *epoch,
						   uint64 *seq);

#endif							/* REGISTRY_PUBLISHING_H */
