/*-------------------------------------------------------------------------
 *
 * join.h
 *	  registry.join() and the serving function it calls on the peer,
 *	  registry.table_definitions() (join.c).
 *
 * Both are SQL-callable only: PostgreSQL finds them by name (pg_finfo_*
 * records), so nothing here is called by another file.  The layout of
 * the message they exchange (kind 'T') is message.c's, in message.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_JOIN_H
#define REGISTRY_JOIN_H

#include "fmgr.h"

/* the actions registry.join() reports, one row each */
#define JOIN_CREATED			"created"
#define JOIN_REGISTERED			"registered"
#define JOIN_EXISTS				"exists"
#define JOIN_DIFFERS			"differs"
#define JOIN_NOT_CREATED		"not created"
#define JOIN_NOT_REGISTERED		"not registered"
#define JOIN_DEFAULT_NOT_COPIED	"default not copied"
#define JOIN_ADDED				"added"

#endif							/* REGISTRY_JOIN_H */
