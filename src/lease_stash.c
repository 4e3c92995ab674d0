/*-------------------------------------------------------------------------
 *
 * lease_stash.c
 *	  registry.lease_stash: rows this node owned in an ephemeral registry
 *	  table that a peer's change deleted, applied here.  A peer deletes
 *	  (expires) a row whose owner it has not heard from for
 *	  registry.owner_timeout; when the owner comes back and its client
 *	  renews the key, registry.renew() writes the row again from here, as a
 *	  new version (a re-registration).  An entry is kept until stashed_at +
 *	  the table's TTL + registry.owner_timeout (lease_stash_purge, run by
 *	  the maintenance job); later, the client must write the row itself.
 *	  Layer 4 (durable stores); calls layers 1 and 4 (keyed.c).
 *
 * The capture trigger stashes (lease_stash_put, rare: a peer deleting a
 * row this node owns) and renew() takes (lease_stash_take, for every key
 * renewed that has no row).  Taking uses the heap and index directly,
 * through keyed.c, as the tombstones do: a key with no entry costs one
 * index probe and writes nothing.  The rest runs SQL as the owner of
 * schema registry, who alone may write the table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "keyed.h"
#include "lease_stash.h"
#include "registry.h"
#include "tombstones.h"

#define Natts_lease_stash	7

#define open_lease_stash(rel, idx, mode) \
	keyed_table_open(REGISTRY_REL_LEASE_STASH, REGISTRY_REL_LEASE_STASH_PKEY, \
					 (rel), (idx), (mode))
#define close_lease_stash(rel, idx)	keyed_table_close((rel), (idx))

static void
spi_run(const char *sql, int nargs, Oid *argtypes, Datum *args,
		const char *nulls, int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, argtypes, args, nulls,
										   false, 0);

	if (rc != expected)
		elog(ERROR, "registry: \"%s\" failed: %s", sql,
			 SPI_result_code_string(rc));
}

/*
 * Stash the row of key (row_jsonb: its columns without registry_version
 * and registry_origin, as to_jsonb() shows them) that this node owned at
 * version owned_version and a peer's change deleted at deleted_version;
 * an older entry of the key is replaced.
 */
void
lease_stash_put(RegTable *t, uint32 khash, const char *key, Datum row_jsonb,
				RegVersion owned_version, RegVersion deleted_version)
{
	Oid			argtypes[7] = {INT4OID, INT4OID, TEXTOID, JSONBOID, INT8OID,
	INT8OID, TIMESTAMPTZOID};
	Datum		args[7];
	RegistryOwnerSave owner;

	args[0] = Int32GetDatum(t->tid);
	args[1] = Int32GetDatum(khash_to_int4(khash));
	args[2] = CStringGetTextDatum(key);
	args[3] = row_jsonb;
	args[4] = Int64GetDatum((int64) owned_version);
	args[5] = Int64GetDatum((int64) deleted_version);
	args[6] = TimestampTzGetDatum(GetCurrentTimestamp());

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	registry_owner_begin(&owner);
	spi_run("INSERT INTO registry.lease_stash "
			"(tid, khash, key, \"row\", owned_version, deleted_version, "
			"stashed_at) "
			"VALUES ($1, $2, $3, $4, $5, $6, $7) "
			"ON CONFLICT (tid, khash, key) DO UPDATE SET "
			"\"row\" = excluded.\"row\", owned_version = excluded.owned_version, "
			"deleted_version = excluded.deleted_version, "
			"stashed_at = excluded.stashed_at",
			7, argtypes, args, NULL, SPI_OK_INSERT);
	registry_owner_end(&owner);
	SPI_finish();
}

/*
 * Whether the key is still deleted since the delete that stashed it: its
 * tombstone is that delete or a later one (another peer's expiry of the
 * same row: every node of a majority judges a silent owner, and each
 * deletes).  A key written again since has no stash entry
 * (lease_stash_drop, at the write).
 */
static bool
still_deleted(RegTable *t, uint32 khash, const char *key,
			  RegVersion deleted_version)
{
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	VersionState st;
	bool		found;

	found = tombstone_get(t->tid, khash, key, snap, &st);
	UnregisterSnapshot(snap);
	return found && st.exists && st.deleted && st.version >= deleted_version;
}

typedef struct TakeState
{
	Relation	rel;
	Jsonb	   *row;
	RegVersion	deleted_version;
	TimestampTz stashed_at;
} TakeState;

static void
stash_seen(HeapTuple tup, void *arg)
{
	TakeState  *ts = arg;
	Datum		values[Natts_lease_stash];
	bool		nulls[Natts_lease_stash];

	heap_deform_tuple(tup, RelationGetDescr(ts->rel), values, nulls);
	if (ts->row)
		pfree(ts->row);
	ts->row = DatumGetJsonbPCopy(values[3]);
	ts->deleted_version = (RegVersion) DatumGetInt64(values[5]);
	ts->stashed_at = DatumGetTimestampTz(values[6]);
}

/*
 * Remove the stashed row of key, if any; true, with *row (palloc'd), if
 * it is still to be written again: stashed no longer ago than the
 * table's TTL plus registry.owner_timeout, and the key deleted since (a
 * tombstone no older than the delete that stashed it).  Otherwise the
 * entry is removed all the same.
 */
bool
lease_stash_take(RegTable *t, uint32 khash, const char *key, Jsonb **row)
{
	Relation	rel;
	Relation	idx;
	TakeState	ts;
	bool		found;

	*row = NULL;
	open_lease_stash(&rel, &idx, RowExclusiveLock);
	ts.rel = rel;
	ts.row = NULL;
	ts.deleted_version = 0;
	ts.stashed_at = 0;
	found = keyed_delete(rel, idx, t->tid, khash, CStringGetTextDatum(key),
						 stash_seen, &ts);
	close_lease_stash(rel, idx);
	if (!found || ts.row == NULL)
		return false;
	if (t->lease_ttl_ms <= 0 ||
		GetCurrentTimestamp() > ts.stashed_at +
		(t->lease_ttl_ms + (int64) registry_owner_timeout_ms) * 1000 ||
		!still_deleted(t, khash, key, ts.deleted_version))
	{
		pfree(ts.row);
		return false;
	}
	*row = ts.row;
	return true;
}

/*
 * The key of an ephemeral table was written again here (inserted over its
 * tombstone, by a client or by a peer's change): a stashed row of it is
 * older than that write, and must not come back over it, nor over a later
 * deliberate delete of the new row.  One index probe; the caller knows the
 * key had a tombstone, without which nothing is stashed.
 */
void
lease_stash_drop(RegTable *t, uint32 khash, const char *key)
{
	Relation	rel;
	Relation	idx;

	open_lease_stash(&rel, &idx, RowExclusiveLock);
	(void) keyed_delete(rel, idx, t->tid, khash, CStringGetTextDatum(key),
						NULL, NULL);
	close_lease_stash(rel, idx);
}

/*
 * Remove the entries kept long enough (stashed_at + the table's TTL +
 * registry.owner_timeout before now), and those of tables no longer
 * ephemeral or no longer registered.  Returns how many went.
 */
int64
lease_stash_purge(TimestampTz now)
{
	Oid			argtypes[2] = {TIMESTAMPTZOID, INTERVALOID};
	Datum		args[2];
	Interval   *timeout = palloc0(sizeof(Interval));
	RegistryOwnerSave owner;
	int64		n;

	timeout->time = (int64) registry_owner_timeout_ms * 1000;
	args[0] = TimestampTzGetDatum(now);
	args[1] = IntervalPGetDatum(timeout);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	registry_owner_begin(&owner);
	spi_run("DELETE FROM registry.lease_stash s "
			"WHERE NOT EXISTS (SELECT FROM registry.replicated_tables r "
			"                  WHERE r.tid = s.tid AND r.lease_ttl IS NOT NULL "
			"                    AND s.stashed_at + r.lease_ttl + $2 >= $1)",
			2, argtypes, args, NULL, SPI_OK_DELETE);
	n = (int64) SPI_processed;
	registry_owner_end(&owner);
	SPI_finish();
	return n;
}

/* A table unregistered, or persistent again: its entries go. */
void
lease_stash_forget_table(int32 tid)
{
	Oid			argtypes[1] = {INT4OID};
	Datum		args[1] = {Int32GetDatum(tid)};
	RegistryOwnerSave owner;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "registry: SPI_connect failed");
	registry_owner_begin(&owner);
	spi_run("DELETE FROM registry.lease_stash WHERE tid = $1",
			1, argtypes, args, NULL, SPI_OK_DELETE);
	registry_owner_end(&owner);
	SPI_finish();
}
