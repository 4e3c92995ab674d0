/*-------------------------------------------------------------------------
 *
 * leases.h
 *	  The leases this node holds on rows of ephemeral registry tables
 *	  (leases.c, layer 3): deadlines in shared memory, renewed without a
 *	  write, and the counters registry.node shows.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_LEASES_H
#define REGISTRY_LEASES_H

#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "registry.h"

/* One lease change of a committed transaction (publish.c, at commit). */
typedef struct LeaseChange
{
	int32		tid;
	uint32		khash;
	const char *key;
	bool		grant;			/* a live row of this node's: full TTL;
								 * else: forget (deleted, or another
								 * node's now) */
	bool		moved;			/* grant: the row was another node's */
	int64		ttl_ms;
	bool		session;		/* grant: bound to this backend's session */
} LeaseChange;

/* What renewing a key found. */
typedef enum LeaseRenew
{
	LEASE_RENEWED,
	LEASE_NOT_HELD				/* no lease here: look at the row */
} LeaseRenew;

/* An expired lease, copied out (the key palloc'd). */
typedef struct LeaseExpired
{
	int32		tid;
	uint32		khash;
	char	   *key;
	char		reason;			/* LEASE_REASON_LEASE or _SESSION */
} LeaseExpired;

/* One lease, copied out for registry.leases. */
typedef struct LeaseInfo
{
	int32		tid;
	char	   *key;
	TimestampTz granted_at;
	TimestampTz renewed_at;
	TimestampTz deadline;		/* 0 while its session lives */
	uint64		renewals;
	int			session_pid;	/* 0: not bound */
	TimestampTz session_ended_at;
} LeaseInfo;

/* Counters, for registry.node. */
typedef enum LeaseCounter
{
	LEASE_COUNT_EXPIRED,		/* TTL ran out here */
	LEASE_COUNT_SESSIONS_EXPIRED,
	LEASE_COUNT_OWNER_EXPIRED,	/* rows of a timed-out owner */
	LEASE_COUNT_HELD_MINORITY,
	LEASE_COUNT_HELD_CAP,
	LEASE_COUNT_REREGISTRATIONS,
	LEASE_NUM_COUNTERS
} LeaseCounter;

typedef struct LeaseCounters
{
	int			capacity;
	int64		used;
	uint64		evictions;
	uint64		grants;
	uint64		renewals;
	uint64		ownership_moves;
	uint64		counts[LEASE_NUM_COUNTERS];
	bool		minority;
} LeaseCounters;

/* shared memory (init) */
extern Size leases_shmem_size(void);
extern void leases_shmem_init(LWLock *lock);
extern void leases_reset(void);

/* publication: never fails */
extern void leases_prepare_session(void);
extern void leases_apply(const LeaseChange *changes, int n, TimestampTz now);

/* renewal and adoption */
extern void leases_renew_many(int32 tid, const uint32 *khashes,
							  char *const *keys, int n, int64 ttl_ms,
							  TimestampTz now, LeaseRenew *out);
extern LeaseRenew leases_renew(int32 tid, uint32 khash, const char *key,
							   int64 ttl_ms, TimestampTz now);
extern bool leases_adopt(int32 tid, uint32 khash, const char *key,
						 int64 ttl_ms, TimestampTz now);
extern uint64 leases_adoption_gen(void);

/* expiry */
extern int	leases_collect_expired(TimestampTz now, int max, LeaseExpired **out);
extern bool leases_still_expired(int32 tid, uint32 khash, const char *key,
								 TimestampTz now);
extern void leases_defer(int32 tid, uint32 khash, const char *key,
						 TimestampTz until);
extern void leases_forget(int32 tid, uint32 khash, const char *key);
extern void leases_count(LeaseCounter which, uint64 n);
extern void leases_set_minority(bool minority);

/* readers */
extern void leases_counters(LeaseCounters *out);
extern LeaseInfo *leases_snapshot(int *n);

#endif							/* REGISTRY_LEASES_H */
