/*-------------------------------------------------------------------------
 *
 * changelog.c
 *	  The change log: a ring in shared memory of committed changes, in
 *	  commit order, numbered by seq (one per change, no gaps).  Peers read
 *	  it from the last seq they consumed (registry.changes_since); the
 *	  notifier turns it into registry_change notifications.
 *
 * The ring keeps registry.change_log_size entries; the oldest is
 * overwritten when it is full (counted in registry.node).  It lives only
 * in memory: after a restart it starts empty under a new epoch, and a
 * reader that was behind falls back to comparing digests.
 *
 * Entries are written only by the commit callback (capture.c) under
 * changelog_lock; everything else reads under the same lock, shared.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "registry.h"
#include "shmem.h"

Size
changelog_entry_size(void)
{
	return MAXALIGN(offsetof(ChangeLogEntry, key) + registry_max_key_length + 1);
}

/* The ring slot of seq (valid only for first_seq <= seq <= last_seq). */
ChangeLogEntry *
changelog_entry(uint64 seq)
{
	uint64		idx = seq % (uint64) registry_change_log_size;

	return (ChangeLogEntry *) (RegistryChangeLog + idx * changelog_entry_size());
}

void
changelog_init(void)
{
	RegistryState->cl_last_seq = 0;
	RegistryState->cl_first_seq = 1;
	RegistryState->cl_overwritten = 0;
	RegistryState->cl_truncations = 0;
}

/*
 * Mark the origin numbers the ring's entries hold (origins_reclaim()).
 * Caller holds meta_lock exclusively; takes changelog_lock.
 */
void
changelog_mark_origins(bool *used)
{
	uint64		s;

	LWLockAcquire(RegistryState->changelog_lock, LW_SHARED);
	for (s = RegistryState->cl_first_seq; s <= RegistryState->cl_last_seq; s++)
	{
		int16		o = changelog_entry(s)->origin;

		if (o >= 0 && o < registry_max_origins)
			used[o] = true;
	}
	LWLockRelease(RegistryState->changelog_lock);
}
