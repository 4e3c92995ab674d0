/*-------------------------------------------------------------------------
 *
 * versions.h
 *	  Access to registry.row_versions, the durable version of every key.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_VERSIONS_H
#define REGISTRY_VERSIONS_H

#include "access/genam.h"
#include "executor/tuptable.h"
#include "utils/snapshot.h"

#include "registry.h"

/* An index-range scan over one table's keys, by hash. */
typedef struct VersionScan
{
	Relation	rel;
	Relation	idx;
	IndexScanDesc scan;
	TupleTableSlot *slot;
} VersionScan;

typedef struct VersionEntry
{
	uint32		khash;
	char	   *key;
	RegVersion	version;
	char		origin[REGISTRY_NAME_LEN];
	bool		deleted;
} VersionEntry;

extern void versions_lookup(int32 tid, uint32 khash, const char *key,
							VersionState *out);
extern RegVersion versions_write(int32 tid, uint32 khash, const char *key,
								 RegVersion apply_version, const char *origin,
								 bool deleted, VersionState *old);
extern bool versions_get(int32 tid, uint32 khash, const char *key,
						 Snapshot snap, VersionState *out);
extern void versions_scan_begin(VersionScan *vs, int32 tid, uint32 lo,
								uint32 hi, Snapshot snap);
extern bool versions_scan_next(VersionScan *vs, VersionEntry *e);
extern void versions_scan_end(VersionScan *vs);

#endif							/* REGISTRY_VERSIONS_H */
