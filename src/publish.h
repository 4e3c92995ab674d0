/*-------------------------------------------------------------------------
 *
 * publish.h
 *	  Publication of a transaction's changes at commit (publish.c), and the
 *	  capture modes: how the row triggers (capture.c) treat the writes of
 *	  a statement the registry itself runs.
 *
 * ---- capture modes ----
 *
 * By default every write to a registry table is a local change: the row
 * gets a new version from the clock and the change is published at commit
 * as one change log entry per key.  Code that writes registry tables on
 * the registry's behalf sets a mode around its statement with
 * publish_mode_push(&mode) and ends it with publish_mode_pop(kind):
 *
 *	CAPTURE_MODE_APPLY_ROW		apply_row() (apply.c): the next write of
 *								(table, key) keeps the remote version and
 *								origin given; anything else user code
 *								writes meanwhile is a local write.
 *	CAPTURE_MODE_APPLY_BULK		apply_rows_bulk() (apply.c): one statement
 *								writes rows[taken[0..nrows-1]], each with
 *								its own version; they are published as one
 *								bulk change of the table.
 *	CAPTURE_MODE_APPLY_FRESH	apply_rows_fresh() (apply.c): rows written
 *								past the triggers, each then recorded with
 *								publish_record(); the table's DELETEs are
 *								not captured; one bulk change.
 *	CAPTURE_MODE_SUPPRESS		registry.resync() (peers.c): the table's
 *								DELETEs are not captured.
 *	CAPTURE_MODE_BULK			TRUNCATE and registry.replicate() of a table
 *								with rows (capture.c): the table's changes
 *								are published as one digest delta and one
 *								"resync" change log entry.
 *	CAPTURE_MODE_EXPIRE			the expiry of leases (expiry.c): the table's
 *								DELETEs are local changes published with
 *								the reason given (the change log's reason,
 *								the notifications' "expiry").
 *
 * Leases: a write to an ephemeral table (RegTable.lease_ttl_ms > 0) also
 * changes this node's lease of the key at commit (leases.c): a live row
 * with this node's origin gets a full TTL (bound to the session with
 * registry.lease_session), any other change drops the lease.
 *
 * Modes may be active together (a bulk change of another table may start
 * inside an apply), with two exceptions, each an ERROR because user code
 * that runs inside the statement would otherwise have its writes taken
 * for ours: an apply mode (APPLY_ROW, APPLY_BULK) cannot start while one
 * is active, and a collecting mode (APPLY_BULK, APPLY_FRESH, BULK) cannot
 * start while one collects.  A SUPPRESS replaces an earlier one.  A mode
 * ends at its pop, when the subtransaction that pushed it aborts, or at
 * the end of the transaction; popping a mode not active is harmless for
 * APPLY_ROW and SUPPRESS (apply_end() pops APPLY_ROW for safety).
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_PUBLISH_H
#define REGISTRY_PUBLISH_H

#include "registry.h"

typedef enum CaptureModeKind
{
	CAPTURE_MODE_APPLY_ROW,
	CAPTURE_MODE_APPLY_BULK,
	CAPTURE_MODE_APPLY_FRESH,
	CAPTURE_MODE_SUPPRESS,
	CAPTURE_MODE_BULK,
	CAPTURE_MODE_EXPIRE
} CaptureModeKind;

typedef struct CaptureMode
{
	CaptureModeKind kind;
	RegTable   *table;
	/* APPLY_ROW: the key being applied (valid until the pop), its version */
	const char *key;
	RegVersion	version;
	const char *origin;
	/* APPLY_BULK: the rows the statement writes, rows[taken[0..nrows-1]] */
	struct ApplyRow *rows;
	int		   *taken;
	int			nrows;
	/* EXPIRE: why (LEASE_REASON_*) */
	char		reason;
} CaptureMode;

extern void publish_mode_push(const CaptureMode *mode);
extern void publish_mode_pop(CaptureModeKind kind);

/* the modes as the triggers see them (capture.c) */
extern const CaptureMode *publish_mode_applying(int32 tid);
extern bool publish_mode_bulk_applying(int32 tid);
extern bool publish_mode_bulk_apply_row(const char *key, RegVersion version,
										const char *origin);
extern bool publish_mode_suppressed(int32 tid);

/* ---- recording changes, published at commit ---- */
extern void publish_init(void);
extern void publish_record(RegTable *t, uint32 khash, const char *key,
						   const VersionState *old, RegVersion version,
						   const char *origin, bool deleted);
extern void publish_reset_table(RegTable *t);
extern void publish_lease_table(int32 tid, bool forget);
extern uint64 publish_last_commit(uint64 *epoch);
extern bool publish_xact_has_changes(void);
extern void publish_adopt_table(RegTable *t);
extern void publish_forget_tombstones(RegTable *t, int n, uint32 *khashes,
									  char **keys, RegVersion *versions,
									  char **origins);

#endif							/* REGISTRY_PUBLISH_H */
