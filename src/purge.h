/*-------------------------------------------------------------------------
 *
 * purge.h
 *	  Purging tombstones (purge.c, layer 7).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_PURGE_H
#define REGISTRY_PURGE_H

extern int64 purge_tombstones(void);

#endif							/* REGISTRY_PURGE_H */
