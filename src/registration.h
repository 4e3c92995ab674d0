/*-------------------------------------------------------------------------
 *
 * registration.h
 *	  Registration and its upkeep (registration.c, layer 7).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_REGISTRATION_H
#define REGISTRY_REGISTRATION_H

#include "registry.h"

extern void registration_defer_khash(RegTable *t);
extern void registration_restore_khash(Oid relid);
extern void registration_adopt_restored(void);
extern void registration_leases_at_commit(int32 tid, bool forget);

#endif							/* REGISTRY_REGISTRATION_H */
