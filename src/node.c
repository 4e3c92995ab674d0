/*-------------------------------------------------------------------------
 *
 * node.c
 *	  This node's incarnation in shared memory (layer 3): when the node
 *	  started, and its state: STARTING until the maintenance worker
 *	  rebuilds the digests from disk, REBUILDING meanwhile, then READY
 *	  (and when it became ready).  The epoch, which tells readers of the
 *	  change log that sequence numbers of an earlier incarnation mean
 *	  nothing, belongs to the change log (changelog.c).
 *
 * Lock rules: the state is an atomic, read without a lock.  ready_at is
 * written just before the state turns READY and read without a lock (a
 * timestamp shown by registry.node).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "port/atomics.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "registry.h"
#include "node.h"

typedef struct NodeShared
{
	TimestampTz started_at;
	pg_atomic_uint32 state;		/* NODE_STATE_* */
	TimestampTz ready_at;		/* 0 until first READY */
} NodeShared;

static NodeShared *NodeState = NULL;

Size
node_shmem_size(void)
{
	return MAXALIGN(sizeof(NodeShared));
}

/* Called by the shared memory startup hook, holding AddinShmemInitLock. */
void
node_shmem_init(void)
{
	bool		found;

	NodeState = ShmemInitStruct("registry node", sizeof(NodeShared), &found);
	if (found)
		return;
	memset(NodeState, 0, sizeof(NodeShared));
	NodeState->started_at = GetCurrentTimestamp();
	pg_atomic_init_u32(&NodeState->state, NODE_STATE_STARTING);
}

TimestampTz
node_started_at(void)
{
	return NodeState->started_at;
}

TimestampTz
node_ready_at(void)
{
	return NodeState->ready_at;
}

uint32
node_state(void)
{
	return pg_atomic_read_u32(&NodeState->state);
}

bool
node_is_ready(void)
{
	return node_state() == NODE_STATE_READY;
}

/* The digest rebuild began. */
void
node_set_rebuilding(void)
{
	pg_atomic_write_u32(&NodeState->state, NODE_STATE_REBUILDING);
}

/* The digests are rebuilt (or there was nothing to rebuild). */
void
node_set_ready(void)
{
	NodeState->ready_at = GetCurrentTimestamp();
	pg_atomic_write_u32(&NodeState->state, NODE_STATE_READY);
}

const char *
node_state_name(uint32 state)
{
	switch (state)
	{
		case NODE_STATE_STARTING:
			return "starting";
		case NODE_STATE_REBUILDING:
			return "rebuilding";
		case NODE_STATE_READY:
			return "ready";
	}
	return "unknown";
}
