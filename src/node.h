/*-------------------------------------------------------------------------
 *
 * node.h
 *	  This node's incarnation: when it started, and whether its
 *	  digests are ready (node.c, layer 3).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_NODE_H
#define REGISTRY_NODE_H

#include "utils/timestamp.h"

/* node states, as shown by registry.node.state */
#define NODE_STATE_STARTING		0	/* digests not yet rebuilt from disk */
#define NODE_STATE_REBUILDING	1
#define NODE_STATE_READY		2

extern Size node_shmem_size(void);
extern void node_shmem_init(void);

extern TimestampTz node_started_at(void);
extern TimestampTz node_ready_at(void);
extern uint32 node_state(void);
extern bool node_is_ready(void);
extern void node_set_rebuilding(void);
extern void node_set_ready(void);
extern const char *node_state_name(uint32 state);

#endif							/* REGISTRY_NODE_H */
