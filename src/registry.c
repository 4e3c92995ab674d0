/*-------------------------------------------------------------------------
 *
 * registry.c
 *	  Module entry point: configuration parameters, hook installation and
 *	  the permission checks every SQL-callable function shares.
 *
 * The library must be loaded through shared_preload_libraries: its shared
 * memory is sized from the parameters below at server start, and the
 * launcher background worker is registered here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_namespace.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "utils/acl.h"
#include "commands/dbcommands.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "publish.h"
#include "registry.h"
#include "shmem.h"

PG_MODULE_MAGIC;

char	   *registry_node_name = NULL;
char	   *registry_database = NULL;
int			registry_max_tables = 64;
int			registry_max_acceptors = 4096;
int			registry_acceptor_ops = 8;
int			registry_change_log_size = 16384;
int			registry_digest_buckets = 4096;
int			registry_max_key_length = 256;
int			registry_max_origins = 32;
int			registry_max_clock_skew_ms = 60000;
int			registry_compress_threshold = 4096;
bool		registry_notifications = true;
int			registry_sync_interval_ms = 1000;
int			registry_antientropy_interval_ms = 60000;
int			registry_batch_size = 1000;
int			registry_connect_timeout_ms = 5000;
int			registry_query_timeout_ms = 30000;
int			registry_tombstone_retention_s = 7 * 24 * 3600;
int			registry_max_message_size = 32 * 1024 * 1024;

bool		registry_preloaded = false;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(registry_assert_preloaded);

static bool
check_node_name(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0')
		return true;			/* a default is derived in _PG_init */
	if (!registry_valid_node_name(*newval))
	{
		GUC_check_errdetail("Node names are at most %d bytes of letters, digits and \"_-.:@\".",
							REGISTRY_NAME_LEN - 1);
		return false;
	}
	return true;
}

static bool
check_power_of_two(int *newval, void **extra, GucSource source)
{
	if (*newval <= 0 || (*newval & (*newval - 1)) != 0)
	{
		GUC_check_errdetail("registry.digest_buckets must be a power of two.");
		return false;
	}
	return true;
}

/*
 * Without an explicit registry.node_name, the node is named after the host
 * and port, which is unique among instances a mesh can reach.
 */
static void
set_default_node_name(void)
{
	char		host[256];
	char		name[REGISTRY_NAME_LEN];
	char	   *p;

	if (registry_node_name != NULL && registry_node_name[0] != '\0')
		return;
	if (gethostname(host, sizeof(host)) != 0)
		strlcpy(host, "localhost", sizeof(host));
	host[sizeof(host) - 1] = '\0';
	/* keep the name inside the accepted alphabet */
	for (p = host; *p; p++)
	{
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
			  (*p >= '0' && *p <= '9') || *p == '-' || *p == '.'))
			*p = '_';
	}
	host[REGISTRY_NAME_LEN - 8] = '\0';
	snprintf(name, sizeof(name), "%s:%d", host, PostPortNumber);
	SetConfigOption("registry.node_name", name, PGC_POSTMASTER,
					PGC_S_DYNAMIC_DEFAULT);
}

/*
 * Loaded any other way than through shared_preload_libraries (CREATE
 * EXTENSION or LOAD on a server without it), the library defines nothing:
 * its restart-only settings cannot be created after startup (that is a
 * FATAL error, which would end the session), and nothing of it works
 * without its shared memory.  The extension script's first call,
 * registry._assert_preloaded(), then says what to do.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomStringVariable("registry.node_name",
							   "Name of this node in the registry mesh.",
							   "Must be unique among all nodes. Defaults to host:port.",
							   &registry_node_name,
							   "",
							   PGC_POSTMASTER,
							   0,
							   check_node_name, NULL, NULL);

	DefineCustomStringVariable("registry.database",
							   "Database that holds the registry tables.",
							   NULL,
							   &registry_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("registry.max_tables",
							"Maximum number of registered tables.",
							NULL,
							&registry_max_tables,
							64, 1, 4096,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.max_acceptors",
							"Number of keys whose recent history is kept in shared memory.",
							"The least recently changed key is evicted when full.",
							&registry_max_acceptors,
							4096, 16, 16 * 1024 * 1024,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.acceptor_ops",
							"Operations remembered per acceptor (key).",
							NULL,
							&registry_acceptor_ops,
							8, 1, 64,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.change_log_size",
							"Number of entries in the shared-memory change log.",
							"The oldest entry is overwritten when full.",
							&registry_change_log_size,
							16384, 16, 64 * 1024 * 1024,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.digest_buckets",
							"Number of digest buckets per registered table (a power of two).",
							NULL,
							&registry_digest_buckets,
							4096, 1, 1024 * 1024,
							PGC_POSTMASTER, 0,
							check_power_of_two, NULL, NULL);

	DefineCustomIntVariable("registry.max_key_length",
							"Longest canonical key, in bytes, a registry table accepts.",
							NULL,
							&registry_max_key_length,
							256, 16, 4096,
							PGC_POSTMASTER, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.max_nodes",
							"Maximum number of distinct origin nodes this node can know.",
							NULL,
							&registry_max_origins,
							32, 2, 1024,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.max_clock_skew",
							"Versions further than this ahead of the local clock are refused.",
							NULL,
							&registry_max_clock_skew_ms,
							60000, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.compress_threshold",
							"Answers to peers larger than this are zlib-compressed; -1 disables compression.",
							NULL,
							&registry_compress_threshold,
							4096, -1, INT_MAX,
							PGC_USERSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("registry.notifications",
							 "Send registry_change notifications for committed changes.",
							 NULL,
							 &registry_notifications,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("registry.sync_interval",
							"How often the sync worker polls each peer's change log without a wake-up.",
							"Peers normally wake it with a notification at once; this is the fallback.",
							&registry_sync_interval_ms,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.antientropy_interval",
							"How often every table's digests are compared with each peer.",
							NULL,
							&registry_antientropy_interval_ms,
							60000, 100, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.batch_size",
							"Rows pulled and applied per transaction.",
							NULL,
							&registry_batch_size,
							1000, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.connect_timeout",
							"Time allowed to connect to a peer.",
							NULL,
							&registry_connect_timeout_ms,
							5000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.query_timeout",
							"Time allowed for a peer to answer one request.",
							NULL,
							&registry_query_timeout_ms,
							30000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.tombstone_retention",
							"Minimum age of a tombstone before it may be purged; peers absent longer need a resync.",
							NULL,
							&registry_tombstone_retention_s,
							7 * 24 * 3600, 1, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.max_message_size",
							"Largest message (raw, before compression) this node reads from a peer.",
							"Peers are asked for no more than this; a larger answer is refused before it is inflated.",
							&registry_max_message_size,
							32 * 1024 * 1024, 1024 * 1024, MaxAllocSize / 4,
							PGC_SUSET, GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("registry");

	registry_preloaded = true;
	set_default_node_name();

	registry_shmem_install_hooks();
	publish_init();
	worker_install_hooks();
	worker_register_launcher();
}

/*
 * Every entry point that touches shared memory calls this first, so that a
 * library loaded late (CREATE EXTENSION without preloading) fails clearly.
 */
void
registry_check_preloaded(void)
{
	if (!registry_preloaded || RegistryState == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("registry must be loaded via shared_preload_libraries"),
				 errhint("Add registry to shared_preload_libraries in postgresql.conf and restart the server.")));
}

bool
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
 * same work would need done by hand (mode: ACL_SELECT, ACL_DELETE, or
 * ACL_INSERT | ACL_UPDATE | ACL_DELETE, all of them), checked before it
 * locks or writes anything.
 */
void
registry_check_table_privilege(Oid relid, AclMode mode, const char *what)
{
	const char *names;

	if (pg_class_aclmask(relid, GetUserId(), mode, ACLMASK_ALL) == mode)
		return;
	names = mode == ACL_SELECT ? "SELECT privilege" :
		mode == ACL_DELETE ? "DELETE privilege" :
		"INSERT, UPDATE and DELETE privileges";
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for table %s",
					get_rel_name(relid) ? get_rel_name(relid) : "?"),
			 errdetail("%s needs %s on the table.", what, names)));
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
