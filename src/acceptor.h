/*-------------------------------------------------------------------------
 *
 * acceptor.h
 *	  Recent history of recently changed keys (acceptor.c, layer 3).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_ACCEPTOR_H
#define REGISTRY_ACCEPTOR_H

#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "registry.h"

extern Size acceptor_shmem_size(void);
extern void acceptor_shmem_init(LWLock *lock);
extern void acceptor_reset(void);

extern void acceptor_batch_begin(void);
extern bool acceptor_note(int32 tid, uint32 khash, const char *key,
						  RegVersion version, int16 origin, char op,
						  TimestampTz when);
extern void acceptor_batch_end(void);
extern void acceptor_counters(int64 *used, uint64 *evictions, uint64 *misses);

#endif							/* REGISTRY_ACCEPTOR_H */
