/*-------------------------------------------------------------------------
 *
 * lease_stash.h
 *	  registry.lease_stash (lease_stash.c, layer 4): rows this node owned
 *	  in an ephemeral table that a peer's change deleted, kept so that
 *	  registry.renew() can write them again (a re-registration).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_LEASE_STASH_H
#define REGISTRY_LEASE_STASH_H

#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "registry.h"

extern void lease_stash_put(RegTable *t, uint32 khash, const char *key,
							Datum row_jsonb, RegVersion owned_version,
							RegVersion deleted_version);
extern void lease_stash_drop(RegTable *t, uint32 khash, const char *key);
extern bool lease_stash_take(RegTable *t, uint32 khash, const char *key,
							 Jsonb **row);
extern int64 lease_stash_purge(TimestampTz now);
extern void lease_stash_forget_table(int32 tid);

#endif							/* REGISTRY_LEASE_STASH_H */
