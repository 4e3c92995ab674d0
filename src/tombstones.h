/*-------------------------------------------------------------------------
 *
 * tombstones.h
 *	  Access to registry.tombstones: the durable versions of deleted keys.
 *
 * The versions of live rows are in the rows themselves (the
 * registry_version and registry_origin columns); a deleted key keeps its
 * version here, so that a delete wins over older writes arriving later
 * and so that digests cover deletions.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_TOMBSTONES_H
#define REGISTRY_TOMBSTONES_H

#include "access/genam.h"
#include "executor/tuptable.h"
#include "storage/lockdefs.h"
#include "utils/snapshot.h"

#include "keyed.h"
#include "registry.h"

typedef struct KeyVersion
{
	uint32		khash;
	char	   *key;
	RegVersion	version;
	char		origin[REGISTRY_NAME_LEN];
	bool		deleted;
} KeyVersion;

extern bool tombstone_take(int32 tid, uint32 khash, const char *key,
						   VersionState *old);
extern RegVersion tombstone_put(int32 tid, uint32 khash, const char *key,
						  RegVersion version, const char *origin,
						  bool apply, VersionState *old);
extern bool tombstone_get(int32 tid, uint32 khash, const char *key,
						  Snapshot snap, VersionState *out);
extern void tombstone_scan_begin(KeyRangeScan *ts, int32 tid, uint32 lo,
								 uint32 hi, Snapshot snap);
extern bool tombstone_scan_next(KeyRangeScan *ts, KeyVersion *e);
extern void tombstone_scan_end(KeyRangeScan *ts);

#endif							/* REGISTRY_TOMBSTONES_H */
