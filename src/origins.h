/*-------------------------------------------------------------------------
 *
 * origins.h
 *	  Numbers for the names of the nodes versions come from (origins.c,
 *	  layer 3).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_ORIGINS_H
#define REGISTRY_ORIGINS_H

#include "storage/lwlock.h"

#define ORIGIN_UNKNOWN	(-1)	/* no slot was free for the origin's name */

/*
 * Marks, in used[registry_max_origins], the numbers a shared structure
 * holds; called by a reclaim with the origins lock held exclusively.  The
 * owner of each structure that stores origin numbers registers one.
 */
typedef void (*origins_mark_hook) (bool *used);

extern Size origins_shmem_size(void);
extern void origins_shmem_init(LWLock *lock);
extern void origins_register_marker(origins_mark_hook mark);

extern int16 origins_id(const char *name);
extern int16 origins_lookup(const char *name);
extern const char *origins_name(int16 id);
extern void origins_unpin(void);
extern void origins_hold_names(void);
extern void origins_release_names(void);
extern void origins_counters(int *used, uint64 *reclaimed, uint64 *unknown);

#endif							/* REGISTRY_ORIGINS_H */
