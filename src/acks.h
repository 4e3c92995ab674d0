/*-------------------------------------------------------------------------
 *
 * acks.h
 *	  What the nodes that pull from this one have applied of its change
 *	  log (acks.c): noted when they ask for more, waited for by
 *	  registry.wait_for_peers().
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_ACKS_H
#define REGISTRY_ACKS_H

#include "utils/timestamp.h"

extern Size acks_shmem_size(void);
extern void acks_shmem_init(void);
extern void acks_note(const char *node, uint64 epoch, uint64 seq);
extern int	acks_wait(uint64 epoch, uint64 seq, char **nodes, int nnodes,
					  int need, TimestampTz deadline);

#endif							/* REGISTRY_ACKS_H */
