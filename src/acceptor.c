/*-------------------------------------------------------------------------
 *
 * acceptor.c
 *	  Acceptors: for each recently changed key, its latest version and a
 *	  short ring of its last operations (version, origin, op), kept in a
 *	  shared hash table of registry.max_acceptors entries.  When it is full
 *	  the least recently changed key is evicted (and counted).
 *
 * Acceptors are a cache of recent history for inspection
 * (registry.acceptors); the durable truth is in the tables themselves.
 * acceptor_note() runs at commit publication, so it never allocates and
 * never raises an error: a key that finds no room is only counted.
 *
 * Lock rules: the hash table, the LRU list and the counters are guarded
 * by the acceptor lock passed to acceptor_shmem_init() (acceptor_lock).
 * Publication notes a transaction's keys between acceptor_batch_begin()
 * and acceptor_batch_end(), which hold it exclusively; readers take it
 * shared.  The view copies entries out and formats them after releasing
 * it, holding the origin names meanwhile (origins_hold_names(), taken
 * first: lock order meta_lock, acceptor_lock).  acceptor_reset()
 * takes it exclusively.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "lib/ilist.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "acceptor.h"
#include "origins.h"
#include "registry.h"

PG_FUNCTION_INFO_V1(registry_acceptors);

typedef struct AcceptorKey
{
	int32		tid;
	char		key[FLEXIBLE_ARRAY_MEMBER];
} AcceptorKey;

typedef struct AcceptorOp
{
	RegVersion	version;
	int16		origin;
	char		op;
} AcceptorOp;

typedef struct AcceptorData
{
	dlist_node	lru;
	RegVersion	version;		/* latest */
	int16		origin;
	char		op;
	uint64		changes;		/* operations seen since the acceptor was made */
	TimestampTz created;
	TimestampTz last_change;
	int			nops;			/* valid entries in ops[] */
	int			next;			/* where the next op goes */
	AcceptorOp	ops[FLEXIBLE_ARRAY_MEMBER];
} AcceptorData;

typedef struct AcceptorShared
{
	LWLock	   *lock;			/* acceptor_lock */
	dlist_head	lru;			/* most recently changed first */
	int64		used;
	uint64		evictions;
	uint64		misses;			/* keys that could not get an acceptor */
} AcceptorShared;

static AcceptorShared *Acc = NULL;
static HTAB *AcceptorHash = NULL;
static Size key_size;
static Size data_offset;

#define ENTRY_DATA(e)	((AcceptorData *) ((char *) (e) + data_offset))
#define DATA_ENTRY(d)	((AcceptorKey *) ((char *) (d) - data_offset))

static void
compute_sizes(void)
{
	key_size = offsetof(AcceptorKey, key) + registry_max_key_length + 1;
	data_offset = MAXALIGN(key_size);
}

static Size
entry_size(void)
{
	compute_sizes();
	return data_offset + offsetof(AcceptorData, ops) +
		sizeof(AcceptorOp) * registry_acceptor_ops;
}

/* the acceptor hash of a key whose key hash (keys_hash()) is khash */
static inline uint32
acceptor_hash_of(int32 tid, uint32 khash)
{
	return khash ^ ((uint32) tid * 0x9E3779B1U);
}

static uint32
acceptor_hash(const void *key, Size keysize)
{
	const AcceptorKey *k = key;

	return acceptor_hash_of(k->tid, keys_hash(k->key, strlen(k->key)));
}

static int
acceptor_match(const void *key1, const void *key2, Size keysize)
{
	const AcceptorKey *a = key1;
	const AcceptorKey *b = key2;

	if (a->tid != b->tid)
		return 1;
	return strcmp(a->key, b->key);
}

static void *
acceptor_keycopy(void *dest, const void *src, Size keysize)
{
	AcceptorKey *d = dest;
	const AcceptorKey *s = src;

	d->tid = s->tid;
	strlcpy(d->key, s->key, keysize - offsetof(AcceptorKey, key));
	return dest;
}

static void acceptor_mark_origins(bool *used);

Size
acceptor_shmem_size(void)
{
	return add_size(MAXALIGN(sizeof(AcceptorShared)),
					hash_estimate_size(registry_max_acceptors, entry_size()));
}

/*
 * Called by the shared memory startup hook, holding AddinShmemInitLock;
 * lock guards everything here (see the lock rules above).
 */
void
acceptor_shmem_init(LWLock *lock)
{
	HASHCTL		info;
	bool		found;

	Acc = ShmemInitStruct("registry acceptor state", sizeof(AcceptorShared),
						  &found);
	if (!found)
	{
		memset(Acc, 0, sizeof(AcceptorShared));
		Acc->lock = lock;
		dlist_init(&Acc->lru);
	}
	origins_register_marker(acceptor_mark_origins);

	info.keysize = (compute_sizes(), key_size);
	info.entrysize = entry_size();
	info.hash = acceptor_hash;
	info.match = acceptor_match;
	info.keycopy = acceptor_keycopy;
	AcceptorHash = ShmemInitHash("registry acceptors",
								 registry_max_acceptors, registry_max_acceptors,
								 &info,
								 HASH_ELEM | HASH_FUNCTION | HASH_COMPARE |
								 HASH_KEYCOPY | HASH_FIXED_SIZE);
}

/* Publication: note a transaction's keys (acceptor_note) until _end. */
void
acceptor_batch_begin(void)
{
	LWLockAcquire(Acc->lock, LW_EXCLUSIVE);
}

void
acceptor_batch_end(void)
{
	LWLockRelease(Acc->lock);
}

/*
 * Record one committed operation on a key.  Caller is between
 * acceptor_batch_begin() and acceptor_batch_end().  Must not fail.
 *
 * Returns false when the key already has a newer version.  Publication
 * is ordered per key (capture.c waits for earlier publishers of the same
 * key), so that is not expected; should it happen, the operation still
 * goes into the history in version order.  Callers may ignore the result.
 */
bool
acceptor_note(int32 tid, uint32 khash, const char *key, RegVersion version,
			  int16 origin, char op, TimestampTz when)
{
	static union
	{
		AcceptorKey k;
		char		buf[offsetof(AcceptorKey, key) + REGISTRY_MAX_KEY_BUF];
	}			kbuf;
	AcceptorKey *entry;
	AcceptorData *d;
	bool		found;
	bool		latest = true;
	int			pos;
	uint32		hashvalue;

	kbuf.k.tid = tid;
	strlcpy(kbuf.k.key, key, registry_max_key_length + 1);
	Assert(khash == keys_hash(key, strlen(key)));
	hashvalue = acceptor_hash_of(tid, khash);

	entry = hash_search_with_hash_value(AcceptorHash, &kbuf, hashvalue,
										HASH_FIND, NULL);
	if (entry == NULL)
	{
		if (Acc->used >= registry_max_acceptors &&
			!dlist_is_empty(&Acc->lru))
		{
			dlist_node *victim = dlist_tail_node(&Acc->lru);
			AcceptorData *vd = dlist_container(AcceptorData, lru, victim);

			dlist_delete(victim);
			hash_search(AcceptorHash, DATA_ENTRY(vd), HASH_REMOVE, NULL);
			Acc->used--;
			Acc->evictions++;
		}
		entry = hash_search_with_hash_value(AcceptorHash, &kbuf, hashvalue,
											HASH_ENTER_NULL, &found);
		if (entry == NULL)
		{
			Acc->misses++;
			return true;
		}
		d = ENTRY_DATA(entry);
		memset(d, 0, offsetof(AcceptorData, ops));
		d->created = when;
		Acc->used++;
	}
	else
	{
		d = ENTRY_DATA(entry);
		dlist_delete(&d->lru);
	}
	dlist_push_head(&Acc->lru, &d->lru);

	if (d->changes > 0 && version < d->version)
		latest = false;
	else
	{
		d->version = version;
		d->origin = origin;
		d->op = op;
	}
	d->changes++;
	d->last_change = when;

	/* append, then move it back past newer operations (version order) */
	pos = d->next;
	d->ops[pos].version = version;
	d->ops[pos].origin = origin;
	d->ops[pos].op = op;
	d->next = (d->next + 1) % registry_acceptor_ops;
	if (d->nops < registry_acceptor_ops)
		d->nops++;
	if (!latest)
	{
		int			n = d->nops;
		int			k;

		for (k = 1; k < n; k++)
		{
			int			cur = (pos - k + 1 + registry_acceptor_ops) % registry_acceptor_ops;
			int			prev = (pos - k + registry_acceptor_ops) % registry_acceptor_ops;
			AcceptorOp	tmp;

			if (d->ops[prev].version <= d->ops[cur].version)
				break;
			tmp = d->ops[prev];
			d->ops[prev] = d->ops[cur];
			d->ops[cur] = tmp;
		}
	}
	return latest;
}

/* Forget every acceptor (CREATE EXTENSION). */
void
acceptor_reset(void)
{
	HASH_SEQ_STATUS status;
	AcceptorKey *e;

	LWLockAcquire(Acc->lock, LW_EXCLUSIVE);
	hash_seq_init(&status, AcceptorHash);
	while ((e = hash_seq_search(&status)) != NULL)
		hash_search(AcceptorHash, e, HASH_REMOVE, NULL);
	dlist_init(&Acc->lru);
	Acc->used = 0;
	LWLockRelease(Acc->lock);
}

/*
 * Mark the origin numbers acceptors hold: the origins_mark_hook this file
 * registers.  Caller (a reclaim) holds meta_lock exclusively; takes the
 * acceptor lock.
 */
static void
acceptor_mark_origins(bool *used)
{
	dlist_iter	it;
	int			j;

	LWLockAcquire(Acc->lock, LW_SHARED);
	dlist_foreach(it, &Acc->lru)
	{
		AcceptorData *d = dlist_container(AcceptorData, lru, it.cur);

		if (d->origin >= 0 && d->origin < registry_max_origins)
			used[d->origin] = true;
		for (j = 0; j < d->nops; j++)
			if (d->ops[j].origin >= 0 && d->ops[j].origin < registry_max_origins)
				used[d->ops[j].origin] = true;
	}
	LWLockRelease(Acc->lock);
}

/* For registry.node. */
void
acceptor_counters(int64 *used, uint64 *evictions, uint64 *misses)
{
	LWLockAcquire(Acc->lock, LW_SHARED);
	*used = Acc->used;
	*evictions = Acc->evictions;
	*misses = Acc->misses;
	LWLockRelease(Acc->lock);
}

/*
 * registry._acceptors(): one row per acceptor, most recently changed
 * first, with its operation history (oldest first) as JSON.
 */
Datum
registry_acceptors(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Size		esz = entry_size();
	char	   *copy;
	int			n = 0;
	int			i;
	dlist_iter	it;

	registry_check_preloaded();
	registry_check_admin();
	InitMaterializedSRF(fcinfo, 0);

	/*
	 * Copy out under the lock, format after releasing it; the origins lock
	 * keeps the names of the origin numbers copied until they are
	 * formatted.
	 */
	origins_hold_names();
	LWLockAcquire(Acc->lock, LW_SHARED);
	copy = palloc(esz * Max(Acc->used, 1));
	dlist_foreach(it, &Acc->lru)
	{
		AcceptorData *d = dlist_container(AcceptorData, lru, it.cur);

		memcpy(copy + (Size) n * esz, DATA_ENTRY(d), esz);
		n++;
	}
	LWLockRelease(Acc->lock);

	for (i = 0; i < n; i++)
	{
		AcceptorKey *k = (AcceptorKey *) (copy + (Size) i * esz);
		AcceptorData *d = ENTRY_DATA(k);
		Datum		values[8];
		bool		nulls[8] = {false};
		StringInfoData hist;
		int			j;
		int			start = (d->next - d->nops + registry_acceptor_ops) % registry_acceptor_ops;

		initStringInfo(&hist);
		appendStringInfoChar(&hist, '[');
		for (j = 0; j < d->nops; j++)
		{
			AcceptorOp *op = &d->ops[(start + j) % registry_acceptor_ops];

			if (j > 0)
				appendStringInfoString(&hist, ", ");
			appendStringInfo(&hist, "{\"op\": \"%s\", \"version\": " UINT64_FORMAT ", \"origin\": ",
							 registry_op_name(op->op), op->version);
			if (origins_name(op->origin))
				escape_json(&hist, origins_name(op->origin));
			else
				appendStringInfoString(&hist, "null");
			appendStringInfoChar(&hist, '}');
		}
		appendStringInfoChar(&hist, ']');

		values[0] = Int32GetDatum(k->tid);
		values[1] = CStringGetTextDatum(k->key);
		values[2] = Int64GetDatum((int64) d->version);
		if (origins_name(d->origin))
			values[3] = CStringGetTextDatum(origins_name(d->origin));
		else
			nulls[3] = true;
		values[4] = CStringGetTextDatum(registry_op_name(d->op));
		values[5] = Int64GetDatum((int64) d->changes);
		values[6] = TimestampTzGetDatum(d->last_change);
		values[7] = DirectFunctionCall1(jsonb_in, CStringGetDatum(hist.data));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	origins_release_names();
	return (Datum) 0;
}
