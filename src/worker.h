/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The launcher, the maintenance worker and the extension hooks
 *	  (worker.c, layer 12).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_WORKER_H
#define REGISTRY_WORKER_H

extern void worker_register_launcher(void);
extern void worker_install_hooks(void);

#endif							/* REGISTRY_WORKER_H */
