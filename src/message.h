/*-------------------------------------------------------------------------
 *
 * message.h
 *	  The messages the serving functions answer with: as C structures, and
 *	  the writers and readers of each kind (message.c).
 *
 * Every serving function returns one bytea message:
 *
 *	 byte 0		'R'
 *	 byte 1		format version (1)
 *	 byte 2		kind: 'C' changes, 'D' digest, 'E' bucket entries, 'R' rows,
 *				'T' table definitions
 *	 byte 3		flags: 1 = payload is zlib-compressed
 *	 bytes 4-7	payload length before compression (big-endian)
 *	 payload
 *
 * Inside the payload integers are big-endian; a string is an int32
 * length (-1 for NULL) followed by that many bytes.  docs/protocol.md
 * describes each kind field by field.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_MESSAGE_H
#define REGISTRY_MESSAGE_H

#include "lib/stringinfo.h"

#include "registry.h"

/* state of a key in an answer */
#define ROW_LIVE		1
#define ROW_TOMBSTONE	2
#define ROW_ABSENT		3		/* the node has no version of the key */
#define ROW_UNKNOWN		4		/* the table is no longer registered */
#define ROW_TOO_LARGE	5		/* live, but its values exceed what the
								 * requester accepts (max_bytes) */

/* bytes before the payload */
#define MSG_HEADER_SIZE	8

/* largest bucket count an answer may be at */
#define MSG_MAX_BUCKETS	(1 << 24)

/* changes_since status */
#define CHANGES_OK		0
#define CHANGES_GAP		1		/* after_seq fell out of the ring */
#define CHANGES_EPOCH	2		/* the caller's epoch is not ours */

typedef struct MsgTable
{
	char	   *name;
	int			ncols;			/* 0 when rows are not included */
	char	  **colnames;
	char	  **coltypes;
} MsgTable;

typedef struct MsgRow
{
	char	   *key;
	int			state;			/* ROW_* */
	RegVersion	version;
	char	   *origin;
	char	  **values;			/* ncols of the table, for ROW_LIVE; NULL
								 * when the answer carries no values */
} MsgRow;

typedef struct MsgChange
{
	uint64		seq;
	int			table;			/* index into tables */
	char	   *key;
	RegVersion	version;
	char	   *origin;
	char		op;
	MsgRow		row;			/* with_rows only */
} MsgChange;

typedef struct MsgChanges
{
	char	   *node;
	uint64		epoch;
	uint64		first_seq;
	uint64		last_seq;
	uint64		upto_seq;		/* highest seq this answer covers: resume from it */
	int			status;
	bool		with_rows;
	int			ntables;
	MsgTable   *tables;
	int			n;
	MsgChange  *changes;
} MsgChanges;

typedef struct MsgDigest
{
	char	   *node;
	char	   *table;
	int			nbuckets;		/* granularity of digests[] */
	uint64		root;
	int64		live;
	int64		tombstones;
	int			lo;				/* first bucket of the first range */
	int			width;			/* buckets per range */
	int			n;
	uint64	   *digests;
} MsgDigest;

typedef struct MsgEntries
{
	MsgTable	table;
	int			nbuckets;
	bool		with_rows;
	int			n;
	MsgRow	   *rows;
	bool		more;			/* truncated at max_entries */
	uint32		next_khash;		/* resume after this key hash */
} MsgEntries;

typedef struct MsgRows
{
	MsgTable	table;
	int			n;
	MsgRow	   *rows;
} MsgRows;

/* kind T: a column's flags */
#define MSG_COL_NOT_NULL	1
#define MSG_COL_GENERATED	2	/* GENERATED ALWAYS AS (default_expr) STORED */

/* kind T: limits a table definition is checked against */
#define MSG_MAX_COLUMNS		1600	/* MaxHeapAttributeNumber */
#define MSG_MAX_KEY_COLUMNS	32		/* INDEX_MAX_KEYS */
#define MSG_MIN_LEASE_TTL_MS	100
#define MSG_MAX_LEASE_TTL_MS	(INT64CONST(360) * 24 * 3600 * 1000)	/* 1 year */

typedef struct MsgDefColumn
{
	char	   *name;
	char	   *type;			/* format_type() with its modifier */
	int			flags;			/* MSG_COL_* */
	char	   *default_expr;	/* the default's text as pg_get_expr()
								 * shows it, or NULL */
} MsgDefColumn;

/* One registry table as registry.table_definitions() describes it. */
typedef struct MsgDefTable
{
	char	   *schema;
	char	   *name;
	int64		lease_ttl_ms;	/* 0: persistent */
	int			ncols;
	MsgDefColumn *cols;
	int			npk;
	int		   *pk;				/* primary key columns: indexes into cols,
								 * in key order */
} MsgDefTable;

typedef struct MsgDefinitions
{
	char	   *node;
	int			n;
	MsgDefTable *tables;
} MsgDefinitions;

/*
 * writing: each kind has its writers beside its reader in message.c.  A
 * writer starts from an initialised, empty buffer (msg_writer_init(), or
 * resetStringInfo() of one used before); a kind's _begin writes its
 * header, the caller writes its items, and its _end fills in what is known
 * only then (counts, upto_seq).  msg_finish() or msg_finish_copy() of
 * w.buf then makes the bytea, compressed if large.  The _size functions
 * give the bytes an item takes, to fit an answer to the caller's limit.
 */
typedef struct MsgWriter
{
	StringInfoData buf;			/* the message so far, header included */
	int			count_at;		/* offset of the count of items */
	int			upto_at;		/* kind C: offset of upto_seq */
} MsgWriter;

extern void msg_writer_init(MsgWriter *w);
extern int	msg_payload_len(StringInfo buf);
extern bytea *msg_finish(StringInfo buf);
extern bytea *msg_finish_copy(StringInfo buf);

/* a row: an item of kinds E and R, and the row of a change in kind C */
extern void msg_write_row(MsgWriter *w, const char *key, int state,
						  RegVersion version, const char *origin,
						  char **values, int ncols);
extern Size msg_row_size(const char *key, int state, const char *origin,
						 char **values, int ncols);
extern Size msg_table_size(RegTable *t, bool with_cols);

/* kind C: begin, then per change msg_write_change (and its row), end */
extern void msg_write_changes_begin(MsgWriter *w, const char *node,
									uint64 epoch, uint64 first_seq,
									uint64 last_seq, int status,
									bool with_rows, RegTable **tables,
									int ntables);
extern void msg_write_change(MsgWriter *w, uint64 seq, int table,
							 const char *key, RegVersion version,
							 const char *origin, char op);
extern Size msg_change_size(const char *key, const char *origin);
extern void msg_write_changes_end(MsgWriter *w, uint64 upto_seq,
								  int nchanges);

/* kind D, whole */
extern void msg_write_digest(MsgWriter *w, const MsgDigest *m);

/* kind E: begin, msg_write_row per entry, end */
extern void msg_write_entries_begin(MsgWriter *w, RegTable *t, int nbuckets,
									bool with_rows);
extern void msg_write_entries_end(MsgWriter *w, int n, bool more,
								  uint32 next_khash);
extern Size msg_entries_end_size(bool more);

/* kind R: begin, msg_write_row per key, end */
extern void msg_write_rows_begin(MsgWriter *w, RegTable *t);
extern void msg_write_rows_end(MsgWriter *w, int n);

/* kind T: begin, msg_write_definition per table, end */
extern void msg_write_definitions_begin(MsgWriter *w, const char *node);
extern void msg_write_definition(MsgWriter *w, const MsgDefTable *t);
extern void msg_write_definitions_end(MsgWriter *w, int n);

/*
 * reading: every function checks the whole message, and errors on
 * anything malformed, before it returns; its result needs at most three
 * times the message's raw size, itself at most registry.max_message_size
 */
extern void msg_read_changes(const char *data, int len, MsgChanges *m);
extern void msg_read_digest(const char *data, int len, MsgDigest *m);
extern void msg_read_entries(const char *data, int len, MsgEntries *m);
extern void msg_read_rows(const char *data, int len, MsgRows *m);
extern void msg_read_definitions(const char *data, int len, MsgDefinitions *m);

#endif							/* REGISTRY_MESSAGE_H */
