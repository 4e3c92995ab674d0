/*-------------------------------------------------------------------------
 *
 * guc.c
 *	  The registry.* configuration parameters: their variables, their
 *	  check hooks and their definition (layer 1, calls nothing above it).
 *
 * Most are PGC_POSTMASTER: shared memory is sized from them at server
 * start.  guc_define() runs once, from _PG_init (init.c), only when the
 * library is loaded through shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <unistd.h>

#include "miscadmin.h"
#include "postmaster/postmaster.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "registry.h"

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
int			registry_pull_compression = REGISTRY_PULL_COMPRESSION_AUTO;
bool		registry_notifications = true;
int			registry_notify_delay_ms = 0;
int			registry_sync_interval_ms = 1000;
int			registry_antientropy_interval_ms = 60000;
int			registry_batch_size = 1000;
int			registry_connect_timeout_ms = 5000;
int			registry_query_timeout_ms = 30000;
int			registry_tombstone_retention_s = 7 * 24 * 3600;
int			registry_max_message_size = 32 * 1024 * 1024;
int			registry_max_leases = 16384;
int			registry_owner_timeout_ms = 30000;
int			registry_expiry_interval_ms = 1000;
int			registry_expiry_cap = 0;
int			registry_expiry_window_ms = 60000;
bool		registry_lease_session = false;

/* true when loaded through shared_preload_libraries (set by _PG_init) */
bool		registry_preloaded = false;

static bool
guc_check_node_name(char **newval, void **extra, GucSource source)
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
guc_check_power_of_two(int *newval, void **extra, GucSource source)
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
 * Define every registry.* parameter, reserve the prefix, and derive the
 * default node name.  Called once by _PG_init.
 */
static const struct config_enum_entry pull_compression_options[] = {
	{"auto", REGISTRY_PULL_COMPRESSION_AUTO, false},
	{"on", REGISTRY_PULL_COMPRESSION_ON, false},
	{"off", REGISTRY_PULL_COMPRESSION_OFF, false},
	{NULL, 0, false}
};

void
guc_define(void)
{
	DefineCustomStringVariable("registry.node_name",
							   "Name of this node in the registry mesh.",
							   "Must be unique among all nodes. Defaults to host:port.",
							   &registry_node_name,
							   "",
							   PGC_POSTMASTER,
							   0,
							   guc_check_node_name, NULL, NULL);

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
							guc_check_power_of_two, NULL, NULL);

	DefineCustomIntVariable("registry.max_key_length",
							"Longest canonical key, in bytes, a registry table accepts.",
							NULL,
							&registry_max_key_length,
							256, 16, REGISTRY_MAX_KEY_LEN,
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

	DefineCustomEnumVariable("registry.pull_compression",
							 "Whether this node lets peers compress their answers to it.",
							 "auto: not over a Unix socket, where compressing costs both ends CPU and saves "
							 "no time; on: as the peer's registry.compress_threshold says; off: never.",
							 &registry_pull_compression,
							 REGISTRY_PULL_COMPRESSION_AUTO,
							 pull_compression_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomBoolVariable("registry.notifications",
							 "Send registry_change notifications for committed changes.",
							 NULL,
							 &registry_notifications,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("registry.notify_delay",
							"Merge window of registry_change notifications: one notification per table for the changes of this long (0: one per change).",
							"A table's window opens at its first change not yet notified and closes this long after.",
							&registry_notify_delay_ms,
							0, 0, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
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

	DefineCustomIntVariable("registry.max_leases",
							"Leases this node can hold on rows of ephemeral registry tables.",
							"When full, the least recently renewed lease is evicted; its row gets a full time to live again at the next adoption pass.",
							&registry_max_leases,
							16384, 16, 10 * 1000 * 1000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.owner_timeout",
							"Time without contact with a peer after which this node expires the ephemeral rows that peer owns.",
							"Only while this node reaches a majority of its peers.",
							&registry_owner_timeout_ms,
							30000, 1000, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.expiry_interval",
							"How often the maintenance worker looks for expired leases and timed-out owners.",
							NULL,
							&registry_expiry_interval_ms,
							1000, 10, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.expiry_cap",
							"Most rows of one ephemeral table this node expires in one registry.expiry_window (0: no cap).",
							"Rows over the cap wait for the next window.",
							&registry_expiry_cap,
							0, 0, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("registry.expiry_window",
							"The window registry.expiry_cap counts expiries in.",
							NULL,
							&registry_expiry_window_ms,
							60000, 1000, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("registry.lease_session",
							 "Bind the rows this session writes in ephemeral registry tables to the session.",
							 "They need no renewal and expire one time to live after the session ends.",
							 &registry_lease_session,
							 false,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	MarkGUCPrefixReserved("registry");

	set_default_node_name();
}
