/*-------------------------------------------------------------------------
 *
 * util.c
 *	  The base every SQL-callable function shares (layer 1): the checks
 *	  (preloaded, admin, not null, table privilege), running as another
 *	  role (registry_become, registry_owner_begin), and the OIDs of the
 *	  extension's own relations (registry_relid).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/twophase.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_namespace.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "registry.h"

PG_FUNCTION_INFO_V1(registry_assert_preloaded);

/* set by the shared memory startup hook once every owner is initialised */
bool		registry_shmem_attached = false;

/* OIDs of the extension's own relations, looked up once per backend */
typedef struct OwnRelid
{
	const char *name;
	Oid			oid;
} OwnRelid;

/* the first ones indexed by RegistryOwnRel (registry.h) */
static OwnRelid own_relids[] = {
	[REGISTRY_REL_TOMBSTONES] = {"tombstones", InvalidOid},
	[REGISTRY_REL_TOMBSTONES_PKEY] = {"tombstones_pkey", InvalidOid},
	[REGISTRY_REL_ROW_KEYS] = {"row_keys", InvalidOid},
	[REGISTRY_REL_ROW_KEYS_PKEY] = {"row_keys_pkey", InvalidOid},
	[REGISTRY_REL_LEASE_STASH] = {"lease_stash", InvalidOid},
	[REGISTRY_REL_LEASE_STASH_PKEY] = {"lease_stash_pkey", InvalidOid},
	{"replicated_tables", InvalidOid},
	{"replicated_tables_pkey", InvalidOid},
	{"replicated_tables_relid_key", InvalidOid},
	{NULL, InvalidOid}
};

static void
own_relids_invalidate(Datum arg, Oid relid)
{
	OwnRelid   *o;

	for (o = own_relids; o->name; o++)
	{
		if (relid == InvalidOid || relid == o->oid)
			o->oid = InvalidOid;
	}
}

static void
own_relids_init(void)
{
	static bool registered = false;

	if (registered)
		return;
	CacheRegisterRelcacheCallback(own_relids_invalidate, (Datum) 0);
	registered = true;
}

static Oid
own_relid_lookup(OwnRelid *o)
{
	Oid			nsp = get_namespace_oid(REGISTRY_SCHEMA, true);

	if (OidIsValid(nsp))
		o->oid = get_relname_relid(o->name, nsp);
	if (!OidIsValid(o->oid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("registry extension is not installed in this database"),
				 errhint("Run CREATE EXTENSION registry.")));
	return o->oid;
}

/* OID of one of the extension's relations; errors if the extension is gone. */
Oid
registry_relid(const char *relname)
{
	OwnRelid   *o;

	own_relids_init();
	for (o = own_relids; o->name; o++)
	{
		if (strcmp(o->name, relname) == 0)
			break;
	}
	Assert(o->name != NULL);
	if (!OidIsValid(o->oid))
		return own_relid_lookup(o);
	return o->oid;
}

/*
 * The same by number, for the relations every INSERT and DELETE of a
 * registry table opens: no string comparisons (a tenth of a microsecond
 * per INSERT, which opens four of them).
 */
Oid
registry_own_relid(RegistryOwnRel rel)
{
	OwnRelid   *o = &own_relids[rel];

	own_relids_init();
	if (!OidIsValid(o->oid))
		return own_relid_lookup(o);
	return o->oid;
}

/*
 * Number of PGPROC slots, what a per-process array in shared memory
 * indexed by pgprocno needs (origin pins, publication order).
 */
int
registry_proc_slots(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

/*
 * Every entry point that touches shared memory calls this first, so that a
 * library loaded late (CREATE EXTENSION without preloading) fails clearly.
 */
void
registry_check_preloaded(void)
{
	if (!registry_preloaded || !registry_shmem_attached)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry must be loaded via shared_preload_libraries"),
				 errhint("Add registry to shared_preload_libraries in postgresql.conf and restart the server.")));
}

static bool
registry_is_admin(void)
{
	Oid			admin;

	if (superuser())
		return true;
	admin = get_role_oid("registry_admin", true);
	return OidIsValid(admin) && has_privs_of_role(GetUserId(), admin);
}

void
registry_check_admin(void)
{
	if (!registry_is_admin())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to administer the registry"),
				 errhint("Only superusers and members of registry_admin may do this.")));
}

/*
 * A registry function that works on a user table needs the privileges the
 * same work would need done by hand (mode: ACL_SELECT, ACL_UPDATE,
 * ACL_DELETE, or ACL_INSERT | ACL_UPDATE | ACL_DELETE, all of them),
 * checked before it locks or writes anything.
 */
void
registry_check_table_privilege(Oid relid, AclMode mode, const char *what)
{
	const char *names;

	if (pg_class_aclmask(relid, GetUserId(), mode, ACLMASK_ALL) == mode)
		return;
	names = mode == ACL_SELECT ? "SELECT privilege" :
		mode == ACL_UPDATE ? "UPDATE privilege" :
		mode == ACL_DELETE ? "DELETE privilege" :
		"INSERT, UPDATE and DELETE privileges";
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for table %s",
					get_rel_name(relid) ? get_rel_name(relid) : "?"),
			 errdetail("%s needs %s on the table.", what, names)));
}

/*
 * Serving is for peers: superusers and members of registry_peer.  Not for
 * registry_admin as such: the serving functions read every registered
 * table, values included, whatever the caller's privileges on it.  (One
 * check with one wording, so that a peer's login role is told the same
 * whichever serving function it calls first.)
 */
void
registry_check_peer(void)
{
	Oid			peer;

	registry_check_preloaded();
	if (superuser())
		return;
	peer = get_role_oid("registry_peer", true);
	if (OidIsValid(peer) && has_privs_of_role(GetUserId(), peer))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to read the registry"),
			 errdetail("Role \"%s\" is not a member of registry_peer.",
					   GetUserNameFromId(GetUserId(), false)),
			 errhint("Peers connect as a member of registry_peer: GRANT registry_peer TO %s;",
					 quote_identifier(GetUserNameFromId(GetUserId(), false)))));
}

/*
 * For functions that are not STRICT because some arguments may be NULL
 * (meaning "default" or "all"): the others must not be.
 */
void
registry_check_not_null(FunctionCallInfo fcinfo, int argno, const char *argname)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("argument \"%s\" must not be null", argname)));
}

/*
 * registry_admin may administer, but has no write access to the extension's
 * own tables (replicated_tables, peers, tombstones): granting it would let
 * members forge tombstones or peers behind the functions' checks.  So the
 * functions, once they have checked the caller, run their statements on
 * those tables as the owner of schema registry, the role that installed
 * the extension.  Only fixed statements on our own tables run this way;
 * statements on user tables keep the caller's identity.  The search_path
 * is pinned meanwhile, so the caller cannot put their own functions or
 * operators in the owner's way, and type names come out the same whoever
 * calls.  An error unwinds both with the transaction.
 */
void
registry_owner_begin(RegistryOwnerSave *save)
{
	Oid			nsp = get_namespace_oid("registry", false);
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(NAMESPACEOID, ObjectIdGetDatum(nsp));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "registry: cache lookup failed for schema %u", nsp);
	owner = ((Form_pg_namespace) GETSTRUCT(tup))->nspowner;
	ReleaseSysCache(tup);

	registry_become(owner, 0, save);
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
}

void
registry_owner_end(const RegistryOwnerSave *save)
{
	registry_unbecome(save);
}

/*
 * Run as role until registry_unbecome(), with sec_flags added to the
 * security context; settings changed meanwhile (by us or by code that runs
 * as role) are undone then.
 */
void
registry_become(Oid role, int sec_flags, RegistryOwnerSave *save)
{
	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	SetUserIdAndSecContext(role, save->sec_context |
						   SECURITY_LOCAL_USERID_CHANGE | sec_flags);
	save->guc_nest = NewGUCNestLevel();
}

void
registry_unbecome(const RegistryOwnerSave *save)
{
	AtEOXact_GUC(false, save->guc_nest);
	SetUserIdAndSecContext(save->userid, save->sec_context);
}

/*
 * Called first by the extension script: refuse to install where the
 * background machinery cannot work, rather than half-working later.
 */
Datum
registry_assert_preloaded(PG_FUNCTION_ARGS)
{
	registry_check_preloaded();
	if (strcmp(get_database_name(MyDatabaseId), registry_database) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry can only be installed in database \"%s\"",
						registry_database),
				 errhint("Set registry.database to this database's name and restart, or create the extension in \"%s\".",
						 registry_database)));
	PG_RETURN_VOID();
}
