/*-------------------------------------------------------------------------
 *
 * keys.c
 *	  Canonical text form of primary keys, and the hashes built on it.
 *
 * Nodes know a row by its key text, so the text must be the same on every
 * node for the same key value, whatever the session's TimeZone, DateStyle,
 * IntervalStyle, extra_float_digits, bytea_output or search_path:
 *
 *	- types whose output never depends on settings (integers, text, uuid,
 *	  bool, enums, ...) use their output function or a direct conversion;
 *	- date, timestamp and timestamptz are written in ISO form, timestamptz
 *	  in UTC; float4/float8 in shortest exact form with -0 written as 0;
 *	  numeric without trailing fractional zeros (1.50 and 1.5 are the same
 *	  key); bytea in hex;
 *	- any other type is output with those settings forced to canonical
 *	  values for the duration of the call.
 *
 * Equal keys must give equal text, so a key column's equality must be
 * bitwise (the btree "equalimage" property), except for the types
 * normalised above.  A single-column key is the value's text; a composite
 * key is written like a row literal: (a,b,"c d").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/nbtree.h"
#include "catalog/pg_type.h"
#include "common/shortest_dec.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "miscadmin.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "registry.h"

typedef enum KeyEncKind
{
	KE_DIRECT,					/* setting-independent output function */
	KE_TEXT,
	KE_INT2,
	KE_INT4,
	KE_INT8,
	KE_NUMERIC,
	KE_FLOAT4,
	KE_FLOAT8,
	KE_DATE,
	KE_TIMESTAMP,
	KE_TIMESTAMPTZ,
	KE_BYTEA,
	KE_GENERIC					/* output under canonical settings */
} KeyEncKind;

static KeyEncKind
kind_for_type(Oid typid)
{
	switch (typid)
	{
		case TEXTOID:
		case VARCHAROID:
			return KE_TEXT;
		case INT2OID:
			return KE_INT2;
		case INT4OID:
			return KE_INT4;
		case INT8OID:
			return KE_INT8;
		case NUMERICOID:
			return KE_NUMERIC;
		case FLOAT4OID:
			return KE_FLOAT4;
		case FLOAT8OID:
			return KE_FLOAT8;
		case DATEOID:
			return KE_DATE;
		case TIMESTAMPOID:
			return KE_TIMESTAMP;
		case TIMESTAMPTZOID:
			return KE_TIMESTAMPTZ;
		case BYTEAOID:
			return KE_BYTEA;
		case BOOLOID:
		case CHAROID:
		case NAMEOID:
		case BPCHAROID:
		case UUIDOID:
		case OIDOID:
		case INETOID:
		case CIDROID:
		case MACADDROID:
		case MACADDR8OID:
			return KE_DIRECT;
	}
	if (type_is_enum(typid))
		return KE_DIRECT;
	return KE_GENERIC;
}

/* Whether canonical key text parses back whatever the session's settings. */
bool
keys_input_is_canonical(KeyColumn *col)
{
	return col->kind != KE_GENERIC;
}

/*
 * Whether a type's output function writes the same text whatever the
 * session's settings, so values need no keys_canonical_gucs_push() around them.
 */
bool
keys_output_is_canonical(Oid typid)
{
	Oid			elem;

	typid = getBaseType(typid);
	switch (typid)
	{
		case TEXTOID:
		case VARCHAROID:
		case BPCHAROID:
		case NAMEOID:
		case CHAROID:
		case INT2OID:
		case INT4OID:
		case INT8OID:
		case OIDOID:
		case BOOLOID:
		case UUIDOID:
		case JSONOID:
		case JSONBOID:
		case NUMERICOID:
		case INETOID:
		case CIDROID:
		case MACADDROID:
		case MACADDR8OID:
			return true;
	}
	if (type_is_enum(typid))
		return true;
	elem = get_element_type(typid);
	if (OidIsValid(elem))
		return keys_output_is_canonical(elem);
	return false;
}

/* How values of a (base) type are written: kind and output function. */
static void
keys_prepare_type(Oid typid, int32 typmod, KeyColumn *col)
{
	bool		varlena;

	col->typid = typid;
	col->typmod = typmod;
	col->kind = kind_for_type(typid);
	getTypeOutputInfo(typid, &col->outfunc, &varlena);
	getTypeInputInfo(typid, &col->infunc, &col->ioparam);
	fmgr_info_cxt(col->outfunc, &col->outinfo, CurrentMemoryContext);
}

/*
 * Describe key column i of pkindex, refusing types whose equal values could
 * be written differently.
 */
void
keys_prepare_column(Relation rel, Relation pkindex, int i, KeyColumn *col,
					bool check_only)
{
	Form_pg_attribute att;
	AttrNumber	attnum = pkindex->rd_index->indkey.values[i];
	Oid			typid;
	int32		typmod;
	Oid			collation = pkindex->rd_indcollation[i];

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("primary key of table \"%s\" uses an expression",
						RelationGetRelationName(rel))));
	att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	typmod = att->atttypmod;
	typid = getBaseTypeAndTypmod(att->atttypid, &typmod);

	if (OidIsValid(collation) && !get_collation_isdeterministic(collation))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("primary key column \"%s\" of table \"%s\" uses a nondeterministic collation",
						NameStr(att->attname), RelationGetRelationName(rel)),
				 errdetail("Keys that compare equal must have the same text on every node."),
				 errhint("Use a deterministic collation for the key column.")));

	col->attnum = attnum;
	col->typid = typid;
	col->typmod = typmod;
	col->collation = collation;
	col->kind = kind_for_type(typid);

	if (col->kind != KE_NUMERIC && col->kind != KE_FLOAT4 &&
		col->kind != KE_FLOAT8)
	{
		Oid			opfamily = pkindex->rd_opfamily[i];
		Oid			opcintype = pkindex->rd_opcintype[i];
		Oid			proc;
		bool		imageeq = false;

		proc = get_opfamily_proc(opfamily, opcintype, opcintype,
								 BTEQUALIMAGE_PROC);
		if (OidIsValid(proc))
			imageeq = DatumGetBool(OidFunctionCall1Coll(proc, collation,
														ObjectIdGetDatum(opcintype)));
		if (!imageeq)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("primary key column \"%s\" of table \"%s\" has type %s, whose equal values may differ in form",
							NameStr(att->attname), RelationGetRelationName(rel),
							format_type_be(att->atttypid)),
					 errdetail("Registry keys must have one canonical text form."),
					 errhint("Use a key type such as text, integer, bigint, uuid, numeric or timestamptz.")));
	}

	if (check_only)
		return;

	{
		Oid			op = get_opfamily_member(pkindex->rd_opfamily[i],
											 pkindex->rd_opcintype[i],
											 pkindex->rd_opcintype[i],
											 BTEqualStrategyNumber);

		if (!OidIsValid(op))
			elog(ERROR, "registry: no equality operator for key column \"%s\"",
				 NameStr(att->attname));
		col->eqproc = get_opcode(op);
	}
	col->name = pstrdup(NameStr(att->attname));
	keys_prepare_type(typid, typmod, col);
}

/*
 * Force the settings that change how values are written.  Used for
 * generic key types, and by the serving and apply paths around row
 * values.
 */
static const char *const canonical_settings[][2] = {
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "postgres"},
	{"TimeZone", "UTC"},
	{"extra_float_digits", "3"},
	{"bytea_output", "hex"},
	{"search_path", "pg_catalog"},
	{"lc_monetary", "C"},
};

void
keys_canonical_gucs_push(int *nestlevel)
{
	size_t		i;

	*nestlevel = NewGUCNestLevel();
	for (i = 0; i < lengthof(canonical_settings); i++)
		(void) set_config_option(canonical_settings[i][0], canonical_settings[i][1],
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
}

/* The same settings for the whole session of a process that only applies. */
void
keys_canonical_gucs_set_session(void)
{
	size_t		i;

	for (i = 0; i < lengthof(canonical_settings); i++)
		SetConfigOption(canonical_settings[i][0], canonical_settings[i][1],
						PGC_SUSET, PGC_S_OVERRIDE);
}

void
keys_canonical_gucs_pop(int nestlevel)
{
	AtEOXact_GUC(true, nestlevel);
}

static void
append_float8(StringInfo buf, double v)
{
	char		tmp[64];

	if (isnan(v))
		appendStringInfoString(buf, "NaN");
	else if (isinf(v))
		appendStringInfoString(buf, v > 0 ? "Infinity" : "-Infinity");
	else if (v == 0)
		appendStringInfoChar(buf, '0');
	else
	{
		double_to_shortest_decimal_buf(v, tmp);
		appendStringInfoString(buf, tmp);
	}
}

static void
append_float4(StringInfo buf, float v)
{
	char		tmp[64];

	if (isnan(v))
		appendStringInfoString(buf, "NaN");
	else if (isinf(v))
		appendStringInfoString(buf, v > 0 ? "Infinity" : "-Infinity");
	else if (v == 0)
		appendStringInfoChar(buf, '0');
	else
	{
		float_to_shortest_decimal_buf(v, tmp);
		appendStringInfoString(buf, tmp);
	}
}

static void
append_value(StringInfo buf, KeyColumn *col, Datum v)
{
	char		tmp[MAXDATELEN + 1];
	struct pg_tm tm;
	fsec_t		fsec;

	switch ((KeyEncKind) col->kind)
	{
		case KE_TEXT:
			{
				text	   *t = DatumGetTextPP(v);

				appendBinaryStringInfo(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				break;
			}
		case KE_INT2:
			pg_ltoa((int32) DatumGetInt16(v), tmp);
			appendStringInfoString(buf, tmp);
			break;
		case KE_INT4:
			pg_ltoa(DatumGetInt32(v), tmp);
			appendStringInfoString(buf, tmp);
			break;
		case KE_INT8:
			pg_lltoa(DatumGetInt64(v), tmp);
			appendStringInfoString(buf, tmp);
			break;
		case KE_NUMERIC:
			appendStringInfoString(buf, numeric_normalize(DatumGetNumeric(v)));
			break;
		case KE_FLOAT4:
			append_float4(buf, DatumGetFloat4(v));
			break;
		case KE_FLOAT8:
			append_float8(buf, DatumGetFloat8(v));
			break;
		case KE_DATE:
			{
				DateADT		d = DatumGetDateADT(v);

				if (DATE_NOT_FINITE(d))
					EncodeSpecialDate(d, tmp);
				else
				{
					j2date(d + POSTGRES_EPOCH_JDATE,
						   &tm.tm_year, &tm.tm_mon, &tm.tm_mday);
					EncodeDateOnly(&tm, USE_ISO_DATES, tmp);
				}
				appendStringInfoString(buf, tmp);
				break;
			}
		case KE_TIMESTAMP:
		case KE_TIMESTAMPTZ:
			{
				Timestamp	ts = DatumGetTimestamp(v);

				if (TIMESTAMP_NOT_FINITE(ts))
					EncodeSpecialTimestamp(ts, tmp);
				else if (timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) == 0)
				{
					/* UTC, written as such: "+00" */
					tm.tm_isdst = 0;
					EncodeDateTime(&tm, fsec, col->kind == KE_TIMESTAMPTZ, 0,
								   NULL, USE_ISO_DATES, tmp);
				}
				else
					ereport(ERROR,
							(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
							 errmsg("timestamp out of range")));
				appendStringInfoString(buf, tmp);
				break;
			}
		case KE_BYTEA:
			{
				bytea	   *b = DatumGetByteaPP(v);
				const unsigned char *p = (const unsigned char *) VARDATA_ANY(b);
				int			n = VARSIZE_ANY_EXHDR(b);
				static const char hex[] = "0123456789abcdef";
				int			i;

				appendStringInfoString(buf, "\\x");
				for (i = 0; i < n; i++)
				{
					appendStringInfoChar(buf, hex[p[i] >> 4]);
					appendStringInfoChar(buf, hex[p[i] & 0xF]);
				}
				break;
			}
		case KE_DIRECT:
		case KE_GENERIC:
			appendStringInfoString(buf, OutputFunctionCall(&col->outinfo, v));
			break;
	}
}

static bool
needs_quotes(const char *s, int len)
{
	int			i;

	if (len == 0)
		return true;
	for (i = 0; i < len; i++)
	{
		char		c = s[i];

		if (c == '"' || c == '\\' || c == '(' || c == ')' || c == ',' ||
			c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
			c == '\v')
			return true;
	}
	return false;
}

/*
 * Canonical key text of one row.  values/isnull are indexed by key column.
 * Errors if the key exceeds registry.max_key_length.
 */
char *
keys_encode(KeyColumn *cols, int ncols, Datum *values, bool *isnull,
			const char *relname)
{
	StringInfoData buf;
	int			nest = -1;
	int			i;

	initStringInfo(&buf);

	for (i = 0; i < ncols; i++)
	{
		if (isnull[i])
			ereport(ERROR,
					(errcode(ERRCODE_NOT_NULL_VIOLATION),
					 errmsg("registry key column is null")));
		if (cols[i].kind == KE_GENERIC && nest < 0)
			keys_canonical_gucs_push(&nest);
	}

	if (ncols == 1)
		append_value(&buf, &cols[0], values[0]);
	else
	{
		StringInfoData v;

		initStringInfo(&v);
		appendStringInfoChar(&buf, '(');
		for (i = 0; i < ncols; i++)
		{
			if (i > 0)
				appendStringInfoChar(&buf, ',');
			resetStringInfo(&v);
			append_value(&v, &cols[i], values[i]);
			if (needs_quotes(v.data, v.len))
			{
				int			j;

				appendStringInfoChar(&buf, '"');
				for (j = 0; j < v.len; j++)
				{
					if (v.data[j] == '"' || v.data[j] == '\\')
						appendStringInfoChar(&buf, '\\');
					appendStringInfoChar(&buf, v.data[j]);
				}
				appendStringInfoChar(&buf, '"');
			}
			else
				appendBinaryStringInfo(&buf, v.data, v.len);
		}
		appendStringInfoChar(&buf, ')');
		pfree(v.data);
	}

	if (nest >= 0)
		keys_canonical_gucs_pop(nest);

	if (buf.len > registry_max_key_length)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 relname ? errmsg("registry key of table %s is too long", relname) :
				 errmsg("registry key is too long"),
				 errdetail("The key is %d bytes; registry.max_key_length is %d bytes.",
						   buf.len, registry_max_key_length),
				 errhint("Use a shorter key, or raise registry.max_key_length on every node and restart.")));
	return buf.data;
}

/*
 * Split key text back into one text value per key column.  Errors on text
 * that keys_encode could not have produced.
 */
List *
keys_split(const char *key, int ncols)
{
	return keys_split_extended(key, ncols, false);
}

/* keys_split(), or NIL for malformed text when missing_ok */
List *
keys_split_extended(const char *key, int ncols, bool missing_ok)
{
	List	   *result = NIL;
	const char *p = key;
	StringInfoData v;

	if (ncols == 1)
		return list_make1(pstrdup(key));

	initStringInfo(&v);
	if (*p != '(')
		goto malformed;
	p++;
	for (;;)
	{
		resetStringInfo(&v);
		if (*p == '"')
		{
			p++;
			for (;;)
			{
				if (*p == '\0')
					goto malformed;
				if (*p == '"')
				{
					p++;
					break;
				}
				if (*p == '\\')
				{
					p++;
					if (*p == '\0')
						goto malformed;
				}
				appendStringInfoChar(&v, *p++);
			}
		}
		else
		{
			while (*p && *p != ',' && *p != ')')
			{
				if (*p == '"' || *p == '\\' || *p == '(')
					goto malformed;
				appendStringInfoChar(&v, *p++);
			}
			if (v.len == 0)
				goto malformed;
		}
		result = lappend(result, pstrdup(v.data));
		if (*p == ',')
		{
			p++;
			continue;
		}
		if (*p == ')' && p[1] == '\0')
			break;
		goto malformed;
	}
	if (list_length(result) != ncols)
		goto malformed;
	pfree(v.data);
	return result;

malformed:
	if (missing_ok)
		return NIL;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("malformed registry key: \"%s\"", key),
			 errdetail("Expected %d key columns in the form (a,b,...).", ncols)));
	return NIL;					/* keep compiler quiet */
}

/* ---- hashing ----
 *
 * Hashes that cross the network (bucket of a key, digest of an entry) must
 * be identical on every platform, so they read bytes explicitly rather
 * than words of native endianness.
 */

static inline uint64
mix64(uint64 k)
{
	k ^= k >> 33;
	k *= UINT64CONST(0xff51afd7ed558ccd);
	k ^= k >> 33;
	k *= UINT64CONST(0xc4ceb9fe1a85ec53);
	k ^= k >> 33;
	return k;
}

static inline uint64
load_le64(const unsigned char *p)
{
	return (uint64) p[0] | ((uint64) p[1] << 8) | ((uint64) p[2] << 16) |
		((uint64) p[3] << 24) | ((uint64) p[4] << 32) | ((uint64) p[5] << 40) |
		((uint64) p[6] << 48) | ((uint64) p[7] << 56);
}

uint64
keys_hash_bytes64(const void *data, size_t len, uint64 seed)
{
	const unsigned char *p = data;
	uint64		h = seed ^ ((uint64) len * UINT64CONST(0x9E3779B97F4A7C15));
	uint64		k;
	size_t		i;

	while (len >= 8)
	{
		h ^= mix64(load_le64(p));
		h = ((h << 27) | (h >> 37)) * 5 + UINT64CONST(0x52dce729);
		p += 8;
		len -= 8;
	}
	k = 0;
	for (i = 0; i < len; i++)
		k |= (uint64) p[i] << (8 * i);
	h ^= mix64(k ^ UINT64CONST(0x2545F4914F6CDD1D));
	return mix64(h);
}

/* 32-bit key hash: places a key in a digest bucket (its high bits). */
uint32
keys_hash(const char *key, int len)
{
	return (uint32) (keys_hash_bytes64(key, len, UINT64CONST(0x7265676973747279)) >> 32);
}

/*
 * registry.key_hash(VARIADIC "any") returns integer: the bucket hash of
 * a key given its column values, for the index on it that every registry
 * table has.  Immutable: the key text does not depend on settings.
 */
PG_FUNCTION_INFO_V1(registry_key_hash);

Datum
registry_key_hash(PG_FUNCTION_ARGS)
{
	KeyColumn  *cols = fcinfo->flinfo->fn_extra;
	int			n = PG_NARGS();
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];
	char	   *key;
	int			i;

	if (n < 1 || n > INDEX_MAX_KEYS || get_fn_expr_variadic(fcinfo->flinfo))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("registry.key_hash() takes the key column values as separate arguments")));
	if (cols == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(fcinfo->flinfo->fn_mcxt);

		cols = palloc0(sizeof(KeyColumn) * n);
		for (i = 0; i < n; i++)
		{
			int32		typmod = -1;
			Oid			typid = get_fn_expr_argtype(fcinfo->flinfo, i);

			if (!OidIsValid(typid))
				elog(ERROR, "registry.key_hash(): could not determine argument types");
			typid = getBaseTypeAndTypmod(typid, &typmod);
			keys_prepare_type(typid, typmod, &cols[i]);
		}
		MemoryContextSwitchTo(old);
		fcinfo->flinfo->fn_extra = cols;
	}
	for (i = 0; i < n; i++)
	{
		isnull[i] = PG_ARGISNULL(i);
		values[i] = isnull[i] ? (Datum) 0 : PG_GETARG_DATUM(i);
	}
	key = keys_encode(cols, n, values, isnull, NULL);
	PG_RETURN_INT32(khash_to_int4(keys_hash(key, strlen(key))));
}
