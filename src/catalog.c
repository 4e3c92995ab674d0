/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  The backend-local cache of what is known about each registered table
 *	  (layer 5): RegTable by relid, by tid and by wire name, the list of
 *	  registrations, and each registered table's shared-memory slot.
 *
 * The durable list is registry.replicated_tables.  Nodes name a table by
 * its quoted "schema.table"; locally it has a small id (tid) that
 * registry.tombstones and shared memory use.  An entry is rebuilt when a
 * relcache invalidation of its table arrives.  Registering, unregistering,
 * the DDL check and taking up restored registrations are registration.c's
 * (layer 7); nothing here writes the catalog.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/catalog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "digest.h"
#include "registry.h"

typedef struct RegTableEntry
{
	RegTable	t;				/* t.relid is the hash key */
	MemoryContext cxt;
} RegTableEntry;

static HTAB *RegTableCache = NULL;

static void
regtable_invalidate(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	RegTableEntry *e;

	if (RegTableCache == NULL)
		return;
	if (relid != InvalidOid)
	{
		e = hash_search(RegTableCache, &relid, HASH_FIND, NULL);
		if (e)
			e->t.valid = false;
		return;
	}
	hash_seq_init(&status, RegTableCache);
	while ((e = hash_seq_search(&status)) != NULL)
		e->t.valid = false;
}

static void
regtable_cache_init(void)
{
	HASHCTL		ctl;

	if (RegTableCache)
		return;
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(RegTableEntry);
	ctl.hcxt = CacheMemoryContext;
	RegTableCache = hash_create("registry tables", 32, &ctl,
								HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	CacheRegisterRelcacheCallback(regtable_invalidate, (Datum) 0);
}

/*
 * Column types are compared by name between peers, so the name must not
 * depend on who looks: built-in types go unqualified, others always carry
 * their schema, whatever the search_path.
 */
static char *
stable_type_name(Oid typid)
{
	HeapTuple	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	Oid			nsp;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "registry: cache lookup failed for type %u", typid);
	nsp = ((Form_pg_type) GETSTRUCT(tup))->typnamespace;
	ReleaseSysCache(tup);
	if (nsp == PG_CATALOG_NAMESPACE)
		return format_type_be(typid);
	return format_type_extended(typid, -1, FORMAT_TYPE_FORCE_QUALIFY);
}

char *
regtable_qualname(Oid relid)
{
	char	   *rel = get_rel_name(relid);
	char	   *nsp;

	if (rel == NULL)
		return NULL;
	nsp = get_namespace_name(get_rel_namespace(relid));
	return quote_qualified_identifier(nsp, rel);
}

/*
 * This instance's and extension's mark on the registrations it makes
 * (replicated_tables.incarnation): the system identifier tells instances
 * apart, the extension's OID a restore into the same instance.
 */
char *
regtable_incarnation(void)
{
	return psprintf(UINT64_FORMAT ".%u", GetSystemIdentifier(),
					get_extension_oid("registry", false));
}

typedef struct CatalogRow
{
	Oid			relid;
	int32		tid;
	bool		khash_deferred;
	bool		restored;		/* incarnation is not this extension's */
	RegVersion	horizon;
	int64		lease_ttl_ms;	/* 0: persistent */
} CatalogRow;

/*
 * A lease's time to live in milliseconds (replicated_tables.lease_ttl);
 * 0 for NULL (persistent).  A month counts 30 days, as interval
 * arithmetic does.
 */
static int64
regtable_interval_ms(Datum d, bool isnull)
{
	Interval   *iv;
	int64		us;

	if (isnull)
		return 0;
	iv = DatumGetIntervalP(d);
	us = iv->time + ((int64) iv->month * DAYS_PER_MONTH + iv->day) * USECS_PER_DAY;
	return Max(us / 1000, 0);
}

/*
 * The registration row for relid (by relid) or tid (by tid), read with a
 * fresh snapshot so that registrations committed after our transaction's
 * snapshot are still seen (the trigger fires as soon as it exists).
 */
static bool
catalog_lookup(Oid relid, int32 tid, CatalogRow *out)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	Snapshot	snap;
	bool		found = false;

	rel = table_open(registry_relid("replicated_tables"), AccessShareLock);
	if (OidIsValid(relid))
		ScanKeyInit(&key, 2, BTEqualStrategyNumber, F_OIDEQ,
					ObjectIdGetDatum(relid));
	else
		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT4EQ,
					Int32GetDatum(tid));
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel,
							  registry_relid(OidIsValid(relid) ?
											 "replicated_tables_relid_key" :
											 "replicated_tables_pkey"),
							  true, snap, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;

		TupleDesc	desc = RelationGetDescr(rel);

		out->tid = DatumGetInt32(heap_getattr(tup, 1, desc, &isnull));
		out->relid = DatumGetObjectId(heap_getattr(tup, 2, desc, &isnull));
		out->khash_deferred = DatumGetBool(heap_getattr(tup, 3, desc, &isnull));
		out->horizon = (RegVersion) DatumGetInt64(heap_getattr(tup, 7, desc, &isnull));
		{
			/* apart: the order a call's arguments are evaluated in is unspecified */
			Datum		ttl = heap_getattr(tup, 9, desc, &isnull);

			out->lease_ttl_ms = regtable_interval_ms(ttl, isnull);
		}
		{
			char	   *mark = TextDatumGetCString(heap_getattr(tup, 8, desc, &isnull));
			char	   *ours = regtable_incarnation();

			out->restored = strcmp(mark, ours) != 0;
			pfree(mark);
			pfree(ours);
		}
		found = true;
	}
	systable_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	return found;
}

/* All registrations, as a list of RegTid. */
List *
regtable_all(void)
{
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	Snapshot	snap;
	List	   *result = NIL;
	char	   *ours = regtable_incarnation();

	rel = table_open(registry_relid("replicated_tables"), AccessShareLock);
	snap = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, InvalidOid, false, snap, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		RegTid	   *r = palloc(sizeof(RegTid));
		char	   *mark = TextDatumGetCString(heap_getattr(tup, 8, desc, &isnull));

		r->tid = DatumGetInt32(heap_getattr(tup, 1, desc, &isnull));
		r->relid = DatumGetObjectId(heap_getattr(tup, 2, desc, &isnull));
		r->khash_deferred = DatumGetBool(heap_getattr(tup, 3, desc, &isnull));
		{
			Datum		ttl = heap_getattr(tup, 9, desc, &isnull);

			r->lease_ttl_ms = regtable_interval_ms(ttl, isnull);
		}
		r->restored = strcmp(mark, ours) != 0;
		pfree(mark);
		result = lappend(result, r);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	return result;
}

static AttrNumber
column_attnum(Relation rel, const char *name, Oid typid)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0 &&
			att->atttypid == typid)
			return att->attnum;
	}
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_COLUMN),
			 errmsg("registry table \"%s\" has lost its %s column of type %s",
					RelationGetRelationName(rel), name, format_type_be(typid)),
			 errhint("Call registry.unreplicate() and registry.replicate() again.")));
	return InvalidAttrNumber;
}

static void
regtable_build(RegTableEntry *e, const CatalogRow *c)
{
	Relation	rel;
	Relation	idx;
	Oid			pkoid;
	MemoryContext old;
	int			i;

	if (e->cxt)
		MemoryContextDelete(e->cxt);
	e->cxt = AllocSetContextCreate(CacheMemoryContext, "registry table",
								   ALLOCSET_SMALL_SIZES);
	/* an invalidation arriving while we build marks it stale again */
	e->t.valid = true;
	e->t.tid = c->tid;
	e->t.slot = -1;
	e->t.restored = c->restored;
	e->t.purge_horizon = c->horizon;
	e->t.lease_ttl_ms = c->lease_ttl_ms;
	e->t.needs_canonical = false;
	{
		static uint64 generations = 0;

		e->t.generation = ++generations;
	}

	rel = relation_open(e->t.relid, AccessShareLock);
	pkoid = RelationGetPrimaryKeyIndex(rel);
	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("registry table \"%s\" has no primary key",
						RelationGetRelationName(rel)),
				 errhint("Restore the primary key, or call registry.unreplicate().")));
	idx = index_open(pkoid, AccessShareLock);

	old = MemoryContextSwitchTo(e->cxt);
	e->t.qualname = regtable_qualname(e->t.relid);
	e->t.pkindex = pkoid;
	e->t.nkeys = idx->rd_index->indnkeyatts;
	e->t.keys = palloc0(sizeof(KeyColumn) * e->t.nkeys);
	for (i = 0; i < e->t.nkeys; i++)
	{
		keys_prepare_column(rel, idx, i, &e->t.keys[i], false);
		if (!keys_input_is_canonical(&e->t.keys[i]))
			e->t.needs_canonical = true;
	}

	e->t.khash_deferred = c->khash_deferred;
	e->t.verattnum = column_attnum(rel, REGISTRY_VERSION_COLUMN, INT8OID);
	e->t.orgattnum = column_attnum(rel, REGISTRY_ORIGIN_COLUMN, TEXTOID);

	/* the columns exchanged with peers: all but our own */
	{
		TupleDesc	desc = RelationGetDescr(rel);

		e->t.cols = palloc0(sizeof(RowColumn) * desc->natts);
		e->t.ncols = 0;
		e->t.has_identity_always = false;
		for (i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);
			RowColumn  *c;
			Oid			outfunc;
			bool		varlena;

			if (att->attisdropped || att->attgenerated ||
				att->attnum == e->t.verattnum || att->attnum == e->t.orgattnum)
				continue;
			if (att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS)
				e->t.has_identity_always = true;
			c = &e->t.cols[e->t.ncols++];
			if (!keys_output_is_canonical(att->atttypid))
				e->t.needs_canonical = true;
			c->attnum = att->attnum;
			c->identity_always = (att->attidentity == ATTRIBUTE_IDENTITY_ALWAYS);
			c->name = pstrdup(NameStr(att->attname));
			c->typname = stable_type_name(att->atttypid);
			c->typid = att->atttypid;
			c->typmod = att->atttypmod;
			getTypeInputInfo(att->atttypid, &c->infunc, &c->ioparam);
			getTypeOutputInfo(att->atttypid, &outfunc, &varlena);
			fmgr_info_cxt(outfunc, &c->outinfo, e->cxt);
		}
	}
	MemoryContextSwitchTo(old);

	index_close(idx, NoLock);
	relation_close(rel, NoLock);
}

/* Cache and return the table of a catalog row just read. */
static RegTable *
regtable_enter(const CatalogRow *c)
{
	RegTableEntry *e;
	bool		found;

	e = hash_search(RegTableCache, &c->relid, HASH_ENTER, &found);
	if (!found)
		e->cxt = NULL;

	/*
	 * The build marks the entry valid first (an invalidation arriving
	 * meanwhile marks it stale again); an error half-way (a lock timeout,
	 * a cancel) must not leave a half-built entry that says it is valid.
	 */
	PG_TRY();
	{
		regtable_build(e, c);
	}
	PG_CATCH();
	{
		e->t.valid = false;
		PG_RE_THROW();
	}
	PG_END_TRY();
	return &e->t;
}

RegTable *
regtable_by_relid(Oid relid, bool missing_ok)
{
	RegTableEntry *e;
	CatalogRow	c;

	regtable_cache_init();
	e = hash_search(RegTableCache, &relid, HASH_FIND, NULL);
	if (e && e->t.valid)
		return &e->t;

	if (!catalog_lookup(relid, 0, &c))
	{
		if (e)
		{
			if (e->cxt)
				MemoryContextDelete(e->cxt);
			hash_search(RegTableCache, &relid, HASH_REMOVE, NULL);
		}
		if (missing_ok)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" is not a registry table",
						get_rel_name(relid) ? get_rel_name(relid) : "?"),
				 errhint("Register it with registry.replicate().")));
	}

	return regtable_enter(&c);
}

RegTable *
regtable_by_tid(int32 tid, bool missing_ok)
{
	HASH_SEQ_STATUS status;
	RegTableEntry *e;
	CatalogRow	c;

	regtable_cache_init();
	hash_seq_init(&status, RegTableCache);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		if (e->t.valid && e->t.tid == tid)
		{
			hash_seq_term(&status);
			return &e->t;
		}
	}
	if (!catalog_lookup(InvalidOid, tid, &c))
	{
		if (missing_ok)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("no registry table has id %d", tid)));
	}
	return regtable_enter(&c);
}

/*
 * A table by its wire name ("schema.table", quoted as needed).  Takes
 * AccessShareLock on it, kept to the end of the transaction.
 */
RegTable *
regtable_by_name(const char *qualname, bool missing_ok)
{
	List	   *names;
	RangeVar   *rv;
	Oid			relid;

	names = stringToQualifiedNameList(qualname);
	rv = makeRangeVarFromNameList(names);
	if (rv->schemaname == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("registry table name \"%s\" must be schema-qualified",
						qualname)));
	relid = RangeVarGetRelid(rv, AccessShareLock, true);
	if (!OidIsValid(relid))
	{
		if (missing_ok)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("registry table \"%s\" does not exist on node \"%s\"",
						qualname, registry_node_name)));
	}
	return regtable_by_relid(relid, missing_ok);
}

/*
 * The cached entry of relid, if any, is stale (the DDL check after ALTER
 * TABLE: the key encoding may have changed); rebuilt at its next use.
 */
void
regtable_forget(Oid relid)
{
	RegTableEntry *e;

	if (RegTableCache &&
		(e = hash_search(RegTableCache, &relid, HASH_FIND, NULL)) != NULL)
		e->t.valid = false;
}

/* Free the shared-memory slots of tables that are no longer registered. */
void
regtable_slots_gc(void)
{
	List	   *regs = regtable_all();
	int32	   *keep = palloc(sizeof(int32) * Max(list_length(regs), 1));
	int			n = 0;
	ListCell   *lc;

	foreach(lc, regs)
		keep[n++] = ((RegTid *) lfirst(lc))->tid;
	digest_slots_gc(keep, n);
	pfree(keep);
}

/*
 * The shared-memory slot of registered table tid, allocated (empty) if it
 * has none.  Errors when registry.max_tables slots are in use even after
 * those of unregistered tables are freed.  Needs a transaction.
 */
int
regtable_slot(int32 tid, Oid relid)
{
	int			slot;
	int			attempt;

	for (attempt = 0; attempt < 2; attempt++)
	{
		slot = digest_slot_alloc(tid, relid);
		if (slot >= 0)
			return slot;
		regtable_slots_gc();
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("too many registry tables"),
			 errdetail("All %d table slots are in use.", registry_max_tables),
			 errhint("Raise registry.max_tables and restart, or unregister tables.")));
	return -1;					/* keep compiler quiet */
}
