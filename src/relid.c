/*-------------------------------------------------------------------------
 *
 * relid.c
 *	  registry_relid(): the OIDs of the extension's own relations, looked
 *	  up once per backend and forgotten at relcache invalidation (layer 1,
 *	  to be merged into util.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"

#include "registry.h"

/* OIDs of the extension's own relations, looked up once per backend */
typedef struct OwnRelid
{
	const char *name;
	Oid			oid;
} OwnRelid;

static OwnRelid own_relids[] = {
	{"replicated_tables", InvalidOid},
	{"replicated_tables_pkey", InvalidOid},
	{"replicated_tables_relid_key", InvalidOid},
	{"tombstones", InvalidOid},
	{"tombstones_pkey", InvalidOid},
	{"row_keys", InvalidOid},
	{"row_keys_pkey", InvalidOid},
	{NULL, InvalidOid}
};

static bool relid_callback_registered = false;

static void
relid_invalidate(Datum arg, Oid relid)
{
	OwnRelid   *o;

	for (o = own_relids; o->name; o++)
	{
		if (relid == InvalidOid || relid == o->oid)
			o->oid = InvalidOid;
	}
}

static void
relid_cache_init(void)
{
	if (relid_callback_registered)
		return;
	CacheRegisterRelcacheCallback(relid_invalidate, (Datum) 0);
	relid_callback_registered = true;
}

/* OID of one of the extension's relations; errors if the extension is gone. */
Oid
registry_relid(const char *relname)
{
	OwnRelid   *o;

	relid_cache_init();
	for (o = own_relids; o->name; o++)
	{
		if (strcmp(o->name, relname) == 0)
			break;
	}
	Assert(o->name != NULL);
	if (!OidIsValid(o->oid))
	{
		Oid			nsp = get_namespace_oid(REGISTRY_SCHEMA, true);

		if (OidIsValid(nsp))
			o->oid = get_relname_relid(relname, nsp);
		if (!OidIsValid(o->oid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("registry extension is not installed in this database"),
					 errhint("Run CREATE EXTENSION registry.")));
	}
	return o->oid;
}
