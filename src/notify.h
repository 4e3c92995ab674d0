/*-------------------------------------------------------------------------
 *
 * notify.h
 *	  The notifier (notify.c, layer 12): registry_change notifications
 *	  from the change log, sent by the maintenance worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_NOTIFY_H
#define REGISTRY_NOTIFY_H

#include "utils/timestamp.h"

extern uint64 notify_pending(void);
extern long notify_next_wait_ms(TimestampTz now);
extern bool notify_listened(void);
extern void notify_install_hook(void);

#endif							/* REGISTRY_NOTIFY_H */
