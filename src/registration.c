/*-------------------------------------------------------------------------
 *
 * registration.c
 *	  Registration of tables (registry.replicate / unreplicate), the checks
 *	  that keep DDL from silently breaking a registered table, the take-up
 *	  of registrations a restore loaded, the deferral of a pulled table's
 *	  registry.row_keys entries, and registry._reset() (layer 7).
 *
 * The durable list is registry.replicated_tables, read through the
 * catalog cache (catalog.c).  A registration a restore loaded (another
 * incarnation's) is taken up here once the restore has made its table
 * whole again: its rows fill its digests (publish_adopt_table) and
 * registry.row_keys.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/catalog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "capture.h"
#include "lease_stash.h"
#include "leases.h"
#include "publish.h"
#include "registration.h"
#include "registry.h"
#include "row_keys.h"
#include "acceptor.h"
#include "changelog.h"
#include "digest.h"
#include "node.h"
#include "worker_slots.h"

PG_FUNCTION_INFO_V1(registry_replicate);
PG_FUNCTION_INFO_V1(registry_unreplicate);
PG_FUNCTION_INFO_V1(registry_check_tables);
PG_FUNCTION_INFO_V1(registry_reset);

#define STAMP_TRIGGER		REGISTRY_STAMP_TRIGGER
#define CAPTURE_TRIGGER		REGISTRY_CAPTURE_TRIGGER
#define TRUNCATE_TRIGGER	"registry_truncate"

/*
 * replicate() and unreplicate() run DDL through SPI, which fires the
 * extension's own ddl_command_end trigger half-way; their in-between
 * states are not checked.  Reset at transaction end.
 */
static bool ddl_check_suppressed = false;

static void
registration_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT ||
		event == XACT_EVENT_PREPARE)
		ddl_check_suppressed = false;
}

static void
suppress_ddl_check(void)
{
	static bool callback_registered = false;

	if (!callback_registered)
	{
		RegisterXactCallback(registration_xact_callback, NULL);
		callback_registered = true;
	}
	ddl_check_suppressed = true;
}

static void
check_registrable(Relation rel)
{
	const char *name = RelationGetRelationName(rel);
	Oid			pkoid;
	Relation	idx;
	int			i;

	switch (rel->rd_rel->relkind)
	{
		case RELKIND_RELATION:
			break;
		case RELKIND_PARTITIONED_TABLE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot register partitioned table \"%s\"", name),
					 errdetail("Partitioned tables and their partitions cannot be registry tables."),
					 errhint("Use an ordinary table.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_WRONG_OBJECT_TYPE),
					 errmsg("\"%s\" is not a table", name),
					 errdetail("Only ordinary tables can be registry tables.")));
	}
	if (rel->rd_rel->relispartition)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot register partition \"%s\"", name),
				 errdetail("Partitioned tables and their partitions cannot be registry tables."),
				 errhint("Use an ordinary table.")));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot register temporary table \"%s\"", name)));
	if (rel->rd_rel->relpersistence == RELPERSISTENCE_UNLOGGED)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot register unlogged table \"%s\"", name),
				 errdetail("Unlogged tables lose their rows in a crash, which replication cannot undo."),
				 errhint("ALTER TABLE %s SET LOGGED first.", name)));
	if (IsCatalogRelation(rel) ||
		RelationGetNamespace(rel) == get_namespace_oid(REGISTRY_SCHEMA, true))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot register system or registry table \"%s\"", name)));

	for (i = 0; i < RelationGetDescr(rel)->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), i);

		if (!att->attisdropped &&
			(strcmp(NameStr(att->attname), REGISTRY_VERSION_COLUMN) == 0 ||
			 strcmp(NameStr(att->attname), REGISTRY_ORIGIN_COLUMN) == 0))
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_COLUMN),
					 errmsg("table \"%s\" already has a column named \"%s\"",
							name, NameStr(att->attname)),
					 errdetail("Registry tables keep each row's version in columns "
							   REGISTRY_VERSION_COLUMN " and " REGISTRY_ORIGIN_COLUMN "."),
					 errhint("Rename the column.")));
	}

	/* RelationGetPrimaryKeyIndex() ignores a deferrable key: look ourselves */
	pkoid = InvalidOid;
	{
		List	   *indexes = RelationGetIndexList(rel);
		ListCell   *lc;

		foreach(lc, indexes)
		{
			Relation	ir = index_open(lfirst_oid(lc), AccessShareLock);

			if (ir->rd_index->indisprimary)
				pkoid = lfirst_oid(lc);
			index_close(ir, AccessShareLock);
		}
	}
	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table \"%s\" has no primary key", name),
				 errdetail("Registry tables are keyed by their primary key."),
				 errhint("Add one with ALTER TABLE %s ADD PRIMARY KEY (...).", name)));
	idx = index_open(pkoid, AccessShareLock);
	if (!idx->rd_index->indimmediate)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("primary key of table \"%s\" is deferrable", name),
				 errdetail("A key must identify one row at every moment.")));
	for (i = 0; i < idx->rd_index->indnkeyatts; i++)
	{
		KeyColumn	col;

		keys_prepare_column(rel, idx, i, &col, true);
	}
	index_close(idx, NoLock);
}

static void
spi_exec(const char *sql, int expected)
{
	int			rc = SPI_execute(sql, false, 0);

	if (rc != expected)
		elog(ERROR, "registry: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
}

/*
 * The primary key columns of table $1 and their types without modifiers,
 * in key order (cols name[], types text[]): what a registration records
 * and what the DDL check compares with it.  One row always: nulls if the
 * table has no primary key.
 */
#define PK_COLUMNS_SQL \
	"(SELECT array_agg(a.attname ORDER BY k.n) AS cols, " \
	"        array_agg(format_type(a.atttypid, NULL) ORDER BY k.n) AS types " \
	" FROM pg_index i, unnest(i.indkey) WITH ORDINALITY k(attnum, n) " \
	" JOIN pg_attribute a ON a.attrelid = $1 AND a.attnum = k.attnum " \
	" WHERE i.indrelid = $1 AND i.indisprimary)"

/* What the DDL check and registration need to know of a table's triggers. */
typedef struct TriggerCheck
{
	int			ours_always;	/* our three, each ENABLE ALWAYS */
	bool		capture_on_update;	/* registry_capture fires for UPDATE */
	bool		later_before_update;	/* see below */
} TriggerCheck;

/*
 * registry_capture must fire for UPDATE when another row-level BEFORE
 * UPDATE trigger fires after registry_stamp (triggers of a kind fire in
 * name order): registry_stamp then does not see the row as it will be
 * written and cannot record the update (update_recorded_before() in
 * capture.c).
 */
static void
check_triggers(Oid relid, TriggerCheck *tc)
{
	Relation	tgrel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;

	memset(tc, 0, sizeof(TriggerCheck));
	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true,
							  NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_trigger tg = (Form_pg_trigger) GETSTRUCT(tup);
		const char *name = NameStr(tg->tgname);

		if (strcmp(name, STAMP_TRIGGER) == 0 ||
			strcmp(name, CAPTURE_TRIGGER) == 0 ||
			strcmp(name, TRUNCATE_TRIGGER) == 0)
		{
			if (tg->tgenabled == TRIGGER_FIRES_ALWAYS)
				tc->ours_always++;
			if (strcmp(name, CAPTURE_TRIGGER) == 0)
				tc->capture_on_update = TRIGGER_FOR_UPDATE(tg->tgtype);
		}
		else if (strcmp(name, STAMP_TRIGGER) > 0 &&
				 tg->tgenabled != TRIGGER_DISABLED &&
				 TRIGGER_FOR_ROW(tg->tgtype) && TRIGGER_FOR_BEFORE(tg->tgtype) &&
				 TRIGGER_FOR_UPDATE(tg->tgtype))
			tc->later_before_update = true;
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
}

static void
create_capture_trigger(const char *qual, bool with_update)
{
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE TRIGGER " CAPTURE_TRIGGER " AFTER INSERT OR %sDELETE ON %s "
					 "FOR EACH ROW EXECUTE FUNCTION registry.capture()",
					 with_update ? "UPDATE OR " : "", qual);
	spi_exec(sql.data, SPI_OK_UTILITY);
	pfree(sql.data);
}

/*
 * registry.replicate(tbl): add the version columns and the triggers,
 * record the registration, stamp existing rows and list their keys in
 * registry.row_keys.
 */
Datum
registry_replicate(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	RegTable   *t;
	char	   *qual;
	StringInfoData sql;
	Oid			argtypes[2] = {OIDOID, TEXTOID};
	Datum		args[2];
	int			rc;
	RegistryOwnerSave owner;
	TriggerCheck tc;

	registry_check_preloaded();
	registry_check_admin();

	/* registration alters the table: only its owner may */
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));

	/* blocks writers, as CREATE TRIGGER would */
	rel = table_open(relid, ShareRowExclusiveLock);
	if (regtable_by_relid(relid, true) != NULL)
	{
		ereport(NOTICE,
				(errmsg("table \"%s\" is already a registry table",
						RelationGetRelationName(rel))));
		table_close(rel, NoLock);
		PG_RETURN_BOOL(false);
	}
	check_registrable(rel);

	qual = regtable_qualname(relid);
	/* ALTER TABLE below refuses a table we hold open; the lock stays */
	table_close(rel, NoLock);

	suppress_ddl_check();
	SPI_connect();
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "ALTER TABLE %s ADD COLUMN " REGISTRY_VERSION_COLUMN " bigint, "
					 "ADD COLUMN " REGISTRY_ORIGIN_COLUMN " text", qual);
	spi_exec(sql.data, SPI_OK_UTILITY);

	args[0] = ObjectIdGetDatum(relid);
	args[1] = CStringGetTextDatum(regtable_incarnation());
	registry_owner_begin(&owner);
	rc = SPI_execute_with_args(
							   "INSERT INTO registry.replicated_tables (relid, incarnation, key_columns, key_types) "
							   "SELECT $1, $2, pk.cols, pk.types FROM " PK_COLUMNS_SQL " pk",
							   2, argtypes, args, NULL, false, 0);
	if (rc != SPI_OK_INSERT || SPI_processed != 1)
		elog(ERROR, "registry: could not record the registration of \"%s\"", qual);
	registry_owner_end(&owner);

	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE TRIGGER " STAMP_TRIGGER " BEFORE INSERT OR UPDATE ON %s "
					 "FOR EACH ROW EXECUTE FUNCTION registry.stamp()", qual);
	spi_exec(sql.data, SPI_OK_UTILITY);
	check_triggers(relid, &tc);
	create_capture_trigger(qual, tc.later_before_update);
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE TRIGGER " TRUNCATE_TRIGGER " BEFORE TRUNCATE ON %s "
					 "FOR EACH STATEMENT EXECUTE FUNCTION registry.capture_truncate()", qual);
	spi_exec(sql.data, SPI_OK_UTILITY);
	/* fire whatever session_replication_role says */
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "ALTER TABLE %s ENABLE ALWAYS TRIGGER " STAMP_TRIGGER ", "
					 "ENABLE ALWAYS TRIGGER " CAPTURE_TRIGGER ", "
					 "ENABLE ALWAYS TRIGGER " TRUNCATE_TRIGGER, qual);
	spi_exec(sql.data, SPI_OK_UTILITY);
	ddl_check_suppressed = false;

	CommandCounterIncrement();
	t = regtable_by_relid(relid, false);
	t->slot = regtable_slot(t->tid, relid);
	/* a new tid: no tombstones, and nobody writes one before we commit */
	digest_tombstones_none(t->slot, t->tid);
	capture_stamp_existing(t);
	(void) row_keys_build(t, false, NULL);
	SPI_finish();

	PG_RETURN_BOOL(true);
}

/*
 * registry.unreplicate(tbl): remove everything replicate() added and
 * forget the table's tombstones and keys.
 */
Datum
registry_unreplicate(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	RegTable   *t;
	char	   *qual;
	StringInfoData sql;
	int32		tid;
	RegistryOwnerSave owner;

	registry_check_preloaded();
	registry_check_admin();

	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));
	rel = table_open(relid, AccessExclusiveLock);
	t = regtable_by_relid(relid, true);
	if (t == NULL)
	{
		ereport(NOTICE,
				(errmsg("table \"%s\" is not a registry table",
						RelationGetRelationName(rel))));
		table_close(rel, NoLock);
		PG_RETURN_BOOL(false);
	}
	tid = t->tid;
	qual = regtable_qualname(relid);
	table_close(rel, NoLock);

	suppress_ddl_check();
	SPI_connect();
	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "DROP TRIGGER IF EXISTS " STAMP_TRIGGER " ON %s; "
					 "DROP TRIGGER IF EXISTS " CAPTURE_TRIGGER " ON %s; "
					 "DROP TRIGGER IF EXISTS " TRUNCATE_TRIGGER " ON %s",
					 qual, qual, qual);
	spi_exec(sql.data, SPI_OK_UTILITY);
	resetStringInfo(&sql);
	appendStringInfo(&sql,
					 "ALTER TABLE %s DROP COLUMN IF EXISTS " REGISTRY_VERSION_COLUMN ", "
					 "DROP COLUMN IF EXISTS " REGISTRY_ORIGIN_COLUMN, qual);
	spi_exec(sql.data, SPI_OK_UTILITY);
	resetStringInfo(&sql);
	row_keys_clear(tid);
	registry_owner_begin(&owner);
	appendStringInfo(&sql, "DELETE FROM registry.tombstones WHERE tid = %d", tid);
	spi_exec(sql.data, SPI_OK_DELETE);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "DELETE FROM registry.replicated_tables WHERE tid = %d", tid);
	spi_exec(sql.data, SPI_OK_DELETE);
	registry_owner_end(&owner);
	SPI_finish();
	ddl_check_suppressed = false;
	/* this node's leases of the table's rows, and the rows it stashed */
	lease_stash_forget_table(tid);
	publish_lease_table(tid, true);

	CacheInvalidateRelcacheByRelid(relid);
	PG_RETURN_BOOL(true);
}

/*
 * Run ddl on relid (unchecked by the DDL check, if not NULL), then set a
 * column of its registration; our entry for the table is rebuilt.
 */
static void
registration_change(Oid relid, const char *ddl, const char *set)
{
	RegistryOwnerSave owner;

	suppress_ddl_check();
	SPI_connect();
	if (ddl)
		spi_exec(ddl, SPI_OK_UTILITY);
	registry_owner_begin(&owner);
	spi_exec(psprintf("UPDATE registry.replicated_tables SET %s WHERE relid = %u",
					  set, relid), SPI_OK_UPDATE);
	registry_owner_end(&owner);
	SPI_finish();
	ddl_check_suppressed = false;
	CacheInvalidateRelcacheByRelid(relid);
	CommandCounterIncrement();
}

/*
 * A whole table is about to be pulled into t, which holds nothing of it:
 * its keys are not listed in registry.row_keys until the pull ends
 * (registration_restore_khash).  Written one at a time, in an order unrelated
 * to the index's, they would cost more than the rest of the pull; built
 * afterwards they are one sort.  Meanwhile khash_deferred is set and
 * bucket_entries() on the table refuses (55000).  Runs in the
 * transaction of the pull's first page.
 */
void
registration_defer_khash(RegTable *t)
{
	if (t->khash_deferred)
		return;
	registration_change(t->relid, NULL, "khash_deferred = true");
}

/*
 * List the keys of a table whose pull deferred them (registration_defer_khash)
 * and record it, saying so in the log; why_here tells a reader of the log
 * why it was not the "registry keys" worker (NULL if it was).  Writers of
 * the table wait meanwhile, about a second per million rows.
 */
void
registration_restore_khash(Oid relid, const char *why_here)
{
	RegTable   *t = regtable_by_relid(relid, false);
	char	   *name = pstrdup(t->qualname);
	TimestampTz start = GetCurrentTimestamp();
	int64		n;
	bool		rebuilt;

	/*
	 * row_keys_build() locks the table against writers; the "registry
	 * keys" worker (why_here NULL) may also rebuild the index, which makes
	 * every registry writer wait meanwhile.
	 */
	n = row_keys_build(t, why_here == NULL, &rebuilt);
	registration_change(relid, NULL, "khash_deferred = false");
	ereport(LOG,
			(errmsg("registry: listed the keys of %s in registry.row_keys after a whole-table pull",
					name),
			 errdetail("%lld keys in %ld ms%s%s%s.", (long long) n,
					   (long) TimestampDifferenceMilliseconds(start, GetCurrentTimestamp()),
					   rebuilt ? ", index rebuilt" : "",
					   why_here ? ", " : "", why_here ? why_here : "")));
}

static void
refuse_ddl(const char *name, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("registry table \"%s\" must keep %s", name, what),
			 errdetail("Without it the table's changes would not be replicated correctly."),
			 errhint("Call registry.unreplicate() first.")));
}

/*
 * Take up a registration restored from a dump, once the restore has made
 * its table whole: it becomes this node's, and the table's rows and
 * tombstones, versions kept, fill its digests (publish_adopt_table) and
 * registry.row_keys.
 */
static void
adopt_restored_table(Oid relid)
{
	RegTable   *t;

	registration_change(relid, NULL,
						psprintf("incarnation = %s, khash_deferred = false",
								 quote_literal_cstr(regtable_incarnation())));
	t = regtable_by_relid(relid, false);
	t->slot = regtable_slot(t->tid, relid);
	publish_adopt_table(t);
	/* registry.row_keys is not dumped: it is derived from the rows */
	(void) row_keys_build(t, false, NULL);
	ereport(LOG,
			(errmsg("registry: took up registry table %s, restored from a dump",
					t->qualname)));
}

/*
 * Whether registered table relid is whole: logged, an ordinary table, its
 * primary key as registered, both registry columns and our three
 * triggers, each enabled ALWAYS.  With refuse, what is wrong raises the error that
 * refuses the DDL; without, the answer is false.
 */
static bool
table_whole(Oid relid, bool refuse, TriggerCheck *tc)
{
	Relation	rel;
	const char *name;
	int			rc;
	Oid			argtypes[1] = {OIDOID};
	Datum		args[1] = {ObjectIdGetDatum(relid)};
	RegistryOwnerSave owner;
	bool		isnull;
	bool		pk_ok;
	bool		cols_ok;

	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		return false;			/* being dropped; sql_drop cleans up */
	name = pstrdup(RelationGetRelationName(rel));

	if (rel->rd_rel->relpersistence != RELPERSISTENCE_PERMANENT)
	{
		if (!refuse)
			goto not_whole;
		refuse_ddl(name, "being a logged table");
	}
	if (rel->rd_rel->relispartition)
	{
		if (!refuse)
			goto not_whole;
		refuse_ddl(name, "being an ordinary table, not a partition");
	}

	/* key columns and version columns as registered */
	SPI_connect();
	registry_owner_begin(&owner);
	rc = SPI_execute_with_args(
							   "SELECT r.key_columns IS NOT DISTINCT FROM pk.cols "
							   "   AND r.key_types IS NOT DISTINCT FROM pk.types, "
							   "       (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = $1 "
							   "          AND NOT a.attisdropped AND "
							   "          ((a.attname = '" REGISTRY_VERSION_COLUMN "' AND a.atttypid = 'bigint'::regtype) OR "
							   "           (a.attname = '" REGISTRY_ORIGIN_COLUMN "' AND a.atttypid = 'text'::regtype))) = 2 "
							   "FROM registry.replicated_tables r, " PK_COLUMNS_SQL " pk "
							   "WHERE r.relid = $1",
							   1, argtypes, args, NULL, false, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "registry: could not check table \"%s\"", name);
	pk_ok = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	cols_ok = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	registry_owner_end(&owner);
	SPI_finish();

	if (!pk_ok && refuse)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot change the primary key of registry table \"%s\"", name),
				 errdetail("Keys identify rows across nodes; changing them would orphan every version."),
				 errhint("Call registry.unreplicate(), change the key, then registry.replicate() on every node.")));
	if (!cols_ok && refuse)
		refuse_ddl(name, "its columns " REGISTRY_VERSION_COLUMN " (bigint) and " REGISTRY_ORIGIN_COLUMN " (text)");

	check_triggers(relid, tc);
	if (tc->ours_always != 3 && refuse)
		refuse_ddl(name, "its registry triggers, enabled ALWAYS");
	relation_close(rel, AccessShareLock);
	return pk_ok && cols_ok && tc->ours_always == 3;

not_whole:
	relation_close(rel, AccessShareLock);
	return false;
}

/*
 * Take up every registration restored from a dump whose table is whole
 * again.  The DDL check does it as the restore completes a table; the
 * sync worker also asks at start and at every round, for a restore that
 * ran no DDL after its data.
 */
void
registration_adopt_restored(void)
{
	List	   *tids = regtable_all();
	ListCell   *lc;

	foreach(lc, tids)
	{
		RegTid	   *r = lfirst(lc);
		TriggerCheck tc;

		if (r->restored && table_whole(r->relid, false, &tc))
			adopt_restored_table(r->relid);
	}
}

/*
 * Called by the extension's ddl_command_end event trigger: refuse DDL that
 * would make a registered table silently stop replicating or change what
 * its keys mean.  A registration restored from a dump is left alone until
 * the restore has made its table whole, then taken up.
 */
Datum
registry_check_tables(PG_FUNCTION_ARGS)
{
	List	   *tids;
	ListCell   *lc;

	if (!registry_preloaded || ddl_check_suppressed)
		PG_RETURN_VOID();
	tids = regtable_all();
	foreach(lc, tids)
	{
		Oid			relid = ((RegTid *) lfirst(lc))->relid;
		TriggerCheck tc;
		RegistryOwnerSave owner;

		if (((RegTid *) lfirst(lc))->restored)
		{
			if (table_whole(relid, false, &tc))
				adopt_restored_table(relid);
			continue;
		}
		if (!table_whole(relid, true, &tc))
			continue;			/* dropped meanwhile */

		/* the cached key encoding may be stale after ALTER TABLE */
		regtable_forget(relid);

		/*
		 * A BEFORE UPDATE trigger created, renamed, enabled or dropped:
		 * registry_capture follows (ALTER TABLE refuses a table held open,
		 * hence after table_whole() closed it).
		 */
		if (tc.later_before_update != tc.capture_on_update)
		{
			char	   *qual = regtable_qualname(relid);
			StringInfoData sql;

			suppress_ddl_check();
			SPI_connect();
			registry_owner_begin(&owner);
			initStringInfo(&sql);
			appendStringInfo(&sql, "DROP TRIGGER " CAPTURE_TRIGGER " ON %s", qual);
			spi_exec(sql.data, SPI_OK_UTILITY);
			create_capture_trigger(qual, tc.later_before_update);
			resetStringInfo(&sql);
			appendStringInfo(&sql, "ALTER TABLE %s ENABLE ALWAYS TRIGGER " CAPTURE_TRIGGER,
							 qual);
			spi_exec(sql.data, SPI_OK_UTILITY);
			registry_owner_end(&owner);
			SPI_finish();
			ddl_check_suppressed = false;
		}
	}
	PG_RETURN_VOID();
}

/*
 * Called by the extension script: a new incarnation starts clean.
 * Whatever a dropped incarnation of the extension left in shared memory
 * is discarded, and a new epoch tells readers of the change log that
 * earlier sequence numbers mean nothing.  Each owner resets its own part
 * under its own lock, one after another in the lock order (acceptor,
 * changelog, meta and digest), then the leases (their lock is taken
 * alone).  Until 1769dea all four locks were held at once; inside CREATE
 * EXTENSION nothing of the new incarnation is visible to other sessions,
 * so no reader can tell.  (A superuser calling
 * registry._reset() by hand on a live node wipes its digests either way.)
 */
Datum
registry_reset(PG_FUNCTION_ARGS)
{
	registry_check_preloaded();
	acceptor_reset();
	changelog_reset();
	digest_clear_all();
	leases_reset();
	node_set_ready();		/* nothing is registered yet */
	hlc_observe_stored(0);
	worker_wake_maintenance();
	/* at commit, the launcher starts the workers that left for want of it */
	worker_extension_changing();
	PG_RETURN_VOID();
}
