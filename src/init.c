/*-------------------------------------------------------------------------
 *
 * init.c
 *	  Module entry point (layer 12): _PG_init, which defines the
 *	  parameters and installs every hook, and the shared memory request
 *	  and startup hooks, which hand over to the layout (shmem.c).
 *
 * The library must be loaded through shared_preload_libraries: its shared
 * memory is sized from the parameters at server start, and the launcher
 * background worker is registered here.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"

#include "notify.h"
#include "publish.h"
#include "registry.h"
#include "shmem.h"
#include "worker.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
init_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	shmem_request_space();
}

static void
init_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	shmem_startup_owners();
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

	guc_define();
	registry_preloaded = true;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = init_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = init_shmem_startup;

	publish_init();
	notify_install_hook();
	worker_install_hooks();
	worker_register_launcher();
}
