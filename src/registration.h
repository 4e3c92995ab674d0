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
extern void registration_restore_khash(Oid relid, const char *why_here);
extern void registration_adopt_restored(void);

#endif							/* REGISTRY_REGISTRATION_H */
