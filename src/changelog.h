/*-------------------------------------------------------------------------
 *
 * changelog.h
 *	  The change log (changelog.c): the ring of committed changes, in
 *	  commit order, that peers read from a seq (registry.changes_since) and
 *	  the notifier turns into notifications.  Its layout in shared memory
 *	  and its lock are private to changelog.c; everyone else goes through
 *	  the functions below.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_CHANGELOG_H
#define REGISTRY_CHANGELOG_H

#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "registry.h"

/* One change to append (publication, at commit). */
typedef struct ChangeLogRecord
{
	int32		tid;
	uint32		khash;
	RegVersion	version;
	int16		origin;			/* origin number (origins), or ORIGIN_UNKNOWN */
	char		op;				/* REG_OP_* */
	char		reason;			/* LEASE_REASON_*, 0 = none */
	const char *key;			/* "" for REG_OP_RESYNC */
} ChangeLogRecord;

/* One change as read from the log: a copy, the origin number named. */
typedef struct ChangeLogChange
{
	uint64		seq;
	RegVersion	version;
	TimestampTz committed_at;
	int32		tid;
	uint32		khash;
	char		op;
	char		reason;			/* LEASE_REASON_*, 0 = none */
	char		origin[REGISTRY_NAME_LEN];	/* "" if unknown */
	char	   *key;
} ChangeLogChange;

/* Counters for registry.node. */
typedef struct ChangeLogStats
{
	uint64		epoch;
	uint64		first_seq;		/* oldest seq still in the ring */
	uint64		last_seq;		/* last published seq, 0 = none yet */
	uint64		overwritten;	/* entries lost to wrap-around */
	uint64		truncations;	/* transactions too large for the ring */
	uint64		notified_seq;	/* notifier progress */
	uint64		notifications_sent;
	uint64		notifications_lost;
	uint64		notifications_truncated;
} ChangeLogStats;

/* shared memory (init) */
extern Size changelog_shmem_size(void);
extern void changelog_shmem_init(LWLock *lock);
extern void changelog_reset(void);

/* writing (publication) */
extern uint64 changelog_append(const ChangeLogRecord *records, int n,
							   TimestampTz committed_at, uint64 *epoch);
extern void changelog_wake_readers(void);

/* reading */
extern int	changelog_read(uint64 after, int max, ChangeLogChange **out,
						   uint64 *first, uint64 *last, uint64 *epoch);
extern uint64 changelog_wait(uint64 after, int max, const uint64 *epoch,
							 const char *const *exclude, int nexclude,
							 int wait_ms, bool watch_client);
extern void changelog_stats(ChangeLogStats *out);

/* the notifier's progress (notify.c) */
extern uint64 changelog_notified_seq(void);
extern void changelog_notified(uint64 notified_seq, uint64 sent, uint64 lost,
							   uint64 truncated);
extern void changelog_want_wakeup(bool want);
extern void changelog_listener_arrived(void);
extern void changelog_listener_left(void);
extern uint32 changelog_listeners(void);
extern uint64 changelog_listen_from(void);

#endif							/* REGISTRY_CHANGELOG_H */
