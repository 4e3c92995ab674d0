/*-------------------------------------------------------------------------
 *
 * worker_slots.h
 *	  The registry's background worker slots, latches and wake-ups, and the
 *	  extension's lifetime as the workers see it (worker_slots.c, layer 3).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_WORKER_SLOTS_H
#define REGISTRY_WORKER_SLOTS_H

#include "postmaster/bgworker.h"
#include "storage/latch.h"

/* Background workers the launcher runs */
#define REG_WORKER_MAINTENANCE	0
#define REG_WORKER_SYNC			1
#define REG_NUM_WORKERS			2

extern Size worker_slots_shmem_size(void);
extern void worker_slots_shmem_init(void);

extern const char *worker_name(int which);
extern void worker_sigterm(SIGNAL_ARGS);

/* waking a worker */
extern void worker_set_latch(int which);
extern void worker_wake_maintenance(void);

/* dynamic workers: the launcher's, and the one that lists a pulled table's keys */
extern bool worker_start_dynamic(const char *function, const char *name,
								 Datum arg, BackgroundWorkerHandle **handle);
extern bool worker_start_keys(Oid relid, BackgroundWorkerHandle **handle);

/* the workers themselves */
extern void worker_attach(int which);
extern void worker_exit_if_asked(int code);
extern void worker_xact_started(void);
extern void worker_check_extension(bool force);
extern bool worker_extension_exists(void);

/* seen from outside (views, the launcher) */
extern pid_t worker_pid(int which);
extern bool worker_running(int which);
extern bool worker_take_idle_exit(int which, uint64 *gen);
extern void worker_set_launcher_latch(Latch *latch);

/* the extension's lifetime */
extern uint64 worker_extension_gen(void);
extern void worker_extension_changing(void);

#endif							/* REGISTRY_WORKER_SLOTS_H */
