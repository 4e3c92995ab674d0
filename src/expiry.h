/*-------------------------------------------------------------------------
 *
 * expiry.h
 *	  Expiring the rows of ephemeral registry tables (expiry.c, layer 11),
 *	  run by the maintenance worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_EXPIRY_H
#define REGISTRY_EXPIRY_H

#include "utils/timestamp.h"

extern bool expiry_run(TimestampTz now);
extern long expiry_next_wait_ms(TimestampTz now);

#endif							/* REGISTRY_EXPIRY_H */
