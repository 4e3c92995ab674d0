/*-------------------------------------------------------------------------
 *
 * apply_batch.h
 *	  Applying one table's rows as a peer sent them, one transaction per
 *	  batch, with prepared statements kept across batches; and the
 *	  worker-side transactions and error recovery the sync worker uses.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_APPLY_BATCH_H
#define REGISTRY_APPLY_BATCH_H

#include "message.h"
#include "registry.h"

/* The rows of one table in one answer. */
typedef struct ApplyBatch
{
	const MsgTable *table;		/* its name and the columns sent (none: an
								 * answer without rows, only tombstones) */
	MsgRow	  **rows;
	int			nrows;
	bool		bulk;			/* live rows in one statement */
	bool		fresh;			/* ... of keys this node does not have; set
								 * false when a local write raced with it */
	bool		defer_khash;	/* ... in a whole-table pull: keys listed at
								 * the end */
} ApplyBatch;

/* What applying a batch did. */
typedef struct ApplyBatchStats
{
	int			applied;
	int			skipped;		/* not newer than ours */
	int			refused_skew;	/* too far in the future */
	int			refused_purged; /* older than a purged tombstone */
	bool		khash_deferred; /* the table's keys were left out of
								 * registry.row_keys: catalog upkeep due */
	int			sqlstate;		/* failed: the error's code and text, or 0 */
	char	   *message;		/* ... and NULL after repeated races */
	char	   *context;		/* ... and the error's CONTEXT, or NULL */
} ApplyBatchStats;

extern void apply_batch_init(MemoryContext cache_parent);
extern bool apply_batch_rows(ApplyBatch *b, ApplyBatchStats *stats);

/* the sync worker's transactions and recovery after a caught ERROR */
extern MemoryContext apply_batch_xact_begin(void);
extern void apply_batch_xact_end(MemoryContext cxt);
extern ErrorData *apply_batch_recover(MemoryContext cxt);
extern char *apply_batch_error_text(ErrorData *edata);

#endif							/* REGISTRY_APPLY_BATCH_H */
