/*-------------------------------------------------------------------------
 *
 * purge.c
 *	  Purging tombstones (layer 7): registry.purge_tombstones(), also run
 *	  by the maintenance worker.
 *
 * Tombstone purge rule: a tombstone is purged once it is older than
 * registry.tombstone_retention AND it was written before the last round
 * in which every peer was found identical to this node (so every peer has
 * it).  A peer that has not been identical for longer than the retention
 * is "lost": purging stops waiting for it and registry.peer_status says it
 * needs a resync.  Each table remembers the newest version it purged (its
 * purge horizon); a key this node has no record of, arriving with an
 * older version, is refused rather than brought back, since it may be a
 * row deleted here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/inval.h"

#include "purge.h"
#include "publish.h"
#include "registry.h"

PG_FUNCTION_INFO_V1(registry_purge_tombstones);

/*
 * registry.purge_tombstones(): apply the purge rule above; returns how
 * many tombstones were purged.  The maintenance worker calls it too.
 */
int64
purge_tombstones(void)
{
	int			rc;
	int64		total = 0;
	char		sql[1024];
	RegistryOwnerSave owner;

	SPI_connect();
	registry_owner_begin(&owner);

	/*
	 * Older than the retention, and written before every peer that is not
	 * lost was last found identical.
	 */
	snprintf(sql, sizeof(sql),
			 "WITH gone AS ("
			 "  DELETE FROM registry.tombstones tb"
			 "   WHERE tb.written_at < now() - make_interval(secs => %d)"
			 "     AND NOT EXISTS (SELECT 1 FROM registry.peers p"
			 "          WHERE coalesce(p.last_converged_at, p.added_at) >= now() - make_interval(secs => %d)"
			 "            AND coalesce(p.last_converged_at, '-infinity') <= tb.written_at)"
			 "  RETURNING tb.tid, tb.khash, tb.key, tb.version, tb.origin) "
			 "SELECT tid, khash, key, version, origin FROM gone ORDER BY tid",
			 registry_tombstone_retention_s, registry_tombstone_retention_s);
	rc = SPI_execute(sql, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry: tombstone purge failed: %s", SPI_result_code_string(rc));

	if (SPI_processed > 0)
	{
		uint64		n = SPI_processed;
		SPITupleTable *tt = SPI_tuptable;
		uint64		i = 0;

		total = (int64) n;
		while (i < n)
		{
			bool		isnull;
			int32		tid = DatumGetInt32(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
			uint64		j = i;
			int			m;
			uint32	   *khashes;
			char	  **keys;
			RegVersion *versions;
			char	  **origins;
			RegVersion	horizon = 0;
			RegTable   *t;

			while (j < n && DatumGetInt32(SPI_getbinval(tt->vals[j], tt->tupdesc, 1, &isnull)) == tid)
				j++;
			m = (int) (j - i);
			khashes = palloc(sizeof(uint32) * m);
			keys = palloc(sizeof(char *) * m);
			versions = palloc(sizeof(RegVersion) * m);
			origins = palloc(sizeof(char *) * m);
			for (int k = 0; k < m; k++)
			{
				HeapTuple	tup = tt->vals[i + k];

				khashes[k] = int4_to_khash(DatumGetInt32(SPI_getbinval(tup, tt->tupdesc, 2, &isnull)));
				keys[k] = SPI_getvalue(tup, tt->tupdesc, 3);
				versions[k] = (RegVersion) DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, 4, &isnull));
				origins[k] = SPI_getvalue(tup, tt->tupdesc, 5);
				if (versions[k] > horizon)
					horizon = versions[k];
			}
			t = regtable_by_tid(tid, true);
			if (t)
			{
				char		upd[256];

				publish_forget_tombstones(t, m, khashes, keys, versions, origins);
				snprintf(upd, sizeof(upd),
						 "UPDATE registry.replicated_tables SET purge_horizon = "
						 "greatest(purge_horizon, " INT64_FORMAT ") WHERE tid = %d",
						 (int64) horizon, tid);
				if (SPI_execute(upd, false, 0) != SPI_OK_UPDATE)
					elog(ERROR, "registry: could not record the purge horizon");
				CacheInvalidateRelcacheByRelid(t->relid);
			}
			i = j;
		}
	}
	registry_owner_end(&owner);
	SPI_finish();
	return total;
}

Datum
registry_purge_tombstones(PG_FUNCTION_ARGS)
{
	registry_check_preloaded();
	registry_check_admin();
	PG_RETURN_INT64(purge_tombstones());
}

