/*
 * pg_stubs.c: stand-ins for the PostgreSQL backend symbols src/message.c
 * links against, so the message decoder can run outside a server under
 * libFuzzer and the sanitizers (scripts/fuzz/run builds it; see
 * pg_stubs.h for the interface the harness uses).
 *
 * - palloc & co: one malloc per request (so AddressSanitizer sees the
 *   exact bounds of every allocation, which PostgreSQL's memory contexts
 *   would hide), kept on a list and all freed by stub_alloc_reset(): the
 *   per-input memory context.  Bytes are counted, and going over the
 *   limit the harness set is reported and abort()s.
 * - ereport(ERROR): errstart/errfinish record the error and errfinish
 *   longjmps to the harness (it must not return: ereport(ERROR) is
 *   followed by pg_unreachable()).  Lower levels return.
 * - pg_verify_mbstr: the UTF-8 rule of PostgreSQL's pg_utf8_verifystr /
 *   pg_utf8_islegal (src/common/wchar.c), rewritten here.
 * - the GUCs and small helpers message.c uses, with the same rules as
 *   src/registry.c and src/tombstones.c.
 * - what only registry_decode_message (JSON output) needs: abort().
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "registry.h"

#include "pg_stubs.h"

/* the stubs use the C library's strerror too, not src/port's */
#undef strerror

#include <stdarg.h>
#include <stdlib.h>

/* ---- GUCs and globals message.c reads ---- */

int			registry_max_message_size = 32 * 1024 * 1024;	/* its default */
int			registry_compress_threshold = 4096;
volatile sig_atomic_t InterruptPending = 0;

void
ProcessInterrupts(void)
{
	InterruptPending = 0;
}

/* ---- allocator ---- */

typedef struct Chunk
{
	struct Chunk *prev;
	struct Chunk *next;
	size_t		size;
	size_t		pad;			/* keeps the data 16-byte aligned */
} Chunk;

static Chunk chunks = {&chunks, &chunks, 0, 0};	/* list head */
static size_t alloc_total;
static size_t alloc_largest;
static size_t alloc_limit;
static bool alloc_counting = true;

void
stub_alloc_begin(size_t limit)
{
	stub_alloc_reset();
	alloc_total = 0;
	alloc_largest = 0;
	alloc_limit = limit;
	alloc_counting = true;
}

void
stub_alloc_reset(void)
{
	Chunk	   *c = chunks.next;

	while (c != &chunks)
	{
		Chunk	   *next = c->next;

		free(c);
		c = next;
	}
	chunks.next = chunks.prev = &chunks;
}

size_t
stub_alloc_total(void)
{
	return alloc_total;
}

size_t
stub_alloc_largest(void)
{
	return alloc_largest;
}

void
stub_alloc_counting(bool on)
{
	alloc_counting = on;
}

static void *
chunk_alloc(Size size, int flags)
{
	Chunk	   *c;

	if (!AllocSizeIsValid(size) &&
		!((flags & MCXT_ALLOC_HUGE) && AllocHugeSizeIsValid(size)))
		elog(ERROR, "invalid memory alloc request size %zu", size);
	if (alloc_counting)
	{
		alloc_total += size;
		if (size > alloc_largest)
			alloc_largest = size;
		if (alloc_limit != 0 && alloc_total > alloc_limit)
		{
			fprintf(stderr,
					"==FUZZ== BUDGET OVERRUN: the decoder allocated %zu bytes in all "
					"(this request: %zu), more than the limit of %zu for this input\n",
					alloc_total, size, alloc_limit);
			abort();
		}
	}
	c = malloc(sizeof(Chunk) + size);
	if (c == NULL)
	{
		if (flags & MCXT_ALLOC_NO_OOM)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errdetail("Failed on request of size %zu.", size)));
	}
	c->size = size;
	c->next = chunks.next;
	c->prev = &chunks;
	chunks.next->prev = c;
	chunks.next = c;
	if (flags & MCXT_ALLOC_ZERO)
		memset(c + 1, 0, size);
	return c + 1;
}

void *
palloc(Size size)
{
	return chunk_alloc(size, 0);
}

void *
palloc0(Size size)
{
	return chunk_alloc(size, MCXT_ALLOC_ZERO);
}

void *
palloc_extended(Size size, int flags)
{
	return chunk_alloc(size, flags);
}

void
pfree(void *pointer)
{
	Chunk	   *c = (Chunk *) pointer - 1;

	c->prev->next = c->next;
	c->next->prev = c->prev;
	free(c);
}

void *
repalloc(void *pointer, Size size)
{
	Chunk	   *old = (Chunk *) pointer - 1;
	void	   *p = chunk_alloc(size, 0);

	memcpy(p, pointer, Min(size, old->size));
	pfree(pointer);
	return p;
}

char *
pstrdup(const char *in)
{
	size_t		n = strlen(in);
	char	   *s = palloc(n + 1);

	memcpy(s, in, n + 1);
	return s;
}

/* ---- ereport ---- */

jmp_buf    *stub_error_jmp;

static int	cur_elevel;
static int	cur_sqlstate;
static char cur_message[1024];
static int	level_count[32];

bool
errstart(int elevel, const char *domain)
{
	if (elevel < ERROR)
		return false;			/* nothing below ERROR is shown */
	cur_elevel = elevel;
	cur_sqlstate = ERRCODE_INTERNAL_ERROR;
	cur_message[0] = '\0';
	return true;
}

bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}

static void
append_message(const char *prefix, const char *fmt, va_list ap)
{
	size_t		used = strlen(cur_message);

	if (used + 1 >= sizeof(cur_message))
		return;
	snprintf(cur_message + used, sizeof(cur_message) - used, "%s", prefix);
	used = strlen(cur_message);
	vsnprintf(cur_message + used, sizeof(cur_message) - used, fmt, ap);
}

#define MESSAGE_FUNC(name, prefix) \
int \
name(const char *fmt,...) \
{ \
	va_list		ap; \
	va_start(ap, fmt); \
	append_message(prefix, fmt, ap); \
	va_end(ap); \
	return 0; \
}

MESSAGE_FUNC(errmsg, "")
MESSAGE_FUNC(errmsg_internal, "")
MESSAGE_FUNC(errdetail, " DETAIL: ")
MESSAGE_FUNC(errdetail_internal, " DETAIL: ")
MESSAGE_FUNC(errdetail_log, " DETAIL: ")
MESSAGE_FUNC(errhint, " HINT: ")
MESSAGE_FUNC(errcontext_msg, " CONTEXT: ")

int
errcode(int sqlerrcode)
{
	cur_sqlstate = sqlerrcode;
	return 0;
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	if (cur_elevel < (int) lengthof(level_count))
		level_count[cur_elevel]++;
	if (cur_elevel >= ERROR)
	{
		if (cur_elevel > ERROR || stub_error_jmp == NULL)
		{
			fprintf(stderr, "==FUZZ== %s outside any STUB_TRY at %s:%d (%s): %s\n",
					cur_elevel > ERROR ? "FATAL/PANIC" : "ERROR",
					filename, lineno, funcname, cur_message);
			abort();
		}
		longjmp(*stub_error_jmp, 1);
	}
}

const char *
stub_error_message(void)
{
	return cur_message;
}

int
stub_error_sqlstate(void)
{
	return cur_sqlstate;
}

int
stub_error_count_by_level(int elevel)
{
	return elevel < (int) lengthof(level_count) ? level_count[elevel] : 0;
}

/* ---- encoding ---- */

static int	db_encoding = PG_UTF8;

void
stub_set_encoding(int encoding)
{
	db_encoding = encoding;
}

int
GetDatabaseEncoding(void)
{
	return db_encoding;
}

const char *
GetDatabaseEncodingName(void)
{
	return db_encoding == PG_UTF8 ? "UTF8" : "SQL_ASCII";
}

/* pg_utf_mblen(): the length a lead byte announces */
static int
utf8_mblen(unsigned char c)
{
	if ((c & 0x80) == 0)
		return 1;
	if ((c & 0xe0) == 0xc0)
		return 2;
	if ((c & 0xf0) == 0xe0)
		return 3;
	if ((c & 0xf8) == 0xf0)
		return 4;
	return 1;
}

/* pg_utf8_islegal() */
static bool
utf8_islegal(const unsigned char *source, int length)
{
	unsigned char a;

	switch (length)
	{
		default:
			return false;
		case 4:
			a = source[3];
			if (a < 0x80 || a > 0xBF)
				return false;
			/* FALLTHROUGH */
		case 3:
			a = source[2];
			if (a < 0x80 || a > 0xBF)
				return false;
			/* FALLTHROUGH */
		case 2:
			a = source[1];
			switch (*source)
			{
				case 0xE0:
					if (a < 0xA0 || a > 0xBF)
						return false;
					break;
				case 0xED:
					if (a < 0x80 || a > 0x9F)
						return false;
					break;
				case 0xF0:
					if (a < 0x90 || a > 0xBF)
						return false;
					break;
				case 0xF4:
					if (a < 0x80 || a > 0x8F)
						return false;
					break;
				default:
					if (a < 0x80 || a > 0xBF)
						return false;
					break;
			}
			/* FALLTHROUGH */
		case 1:
			a = *source;
			if (a >= 0x80 && a < 0xC2)
				return false;
			if (a > 0xF4)
				return false;
			break;
	}
	return true;
}

/* pg_utf8_verifystr() == len: no zero byte, every sequence legal */
bool
stub_utf8_valid(const unsigned char *s, int len)
{
	while (len > 0)
	{
		int			l;

		if (*s == 0)
			return false;
		if (*s < 0x80)
		{
			s++;
			len--;
			continue;
		}
		l = utf8_mblen(*s);
		if (len < l || !utf8_islegal(s, l))
			return false;
		s += l;
		len -= l;
	}
	return true;
}

bool
pg_verify_mbstr(int encoding, const char *mbstr, int len, bool noError)
{
	bool		ok;

	if (encoding == PG_UTF8)
		ok = stub_utf8_valid((const unsigned char *) mbstr, len);
	else
		ok = memchr(mbstr, 0, len) == NULL; /* SQL_ASCII: any byte but 0 */
	if (!ok && !noError)
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("invalid byte sequence for encoding \"%s\"",
						GetDatabaseEncodingName())));
	return ok;
}

/* ---- StringInfo (the writing half of message.c; the harness re-encodes) ---- */

void
initStringInfo(StringInfo str)
{
	str->maxlen = 1024;
	str->data = palloc(str->maxlen);
	resetStringInfo(str);
}

void
resetStringInfo(StringInfo str)
{
	str->data[0] = '\0';
	str->len = 0;
	str->cursor = 0;
}

void
enlargeStringInfo(StringInfo str, int needed)
{
	int			newlen;

	if (needed < 0 || ((Size) needed) >= (MaxAllocSize - (Size) str->len))
		elog(ERROR, "out of memory: cannot enlarge string buffer of %d bytes by %d",
			 str->len, needed);
	needed += str->len + 1;
	if (needed <= str->maxlen)
		return;
	newlen = 2 * str->maxlen;
	while (needed > newlen)
		newlen = 2 * newlen;
	if (newlen > (int) MaxAllocSize)
		newlen = (int) MaxAllocSize;
	str->data = repalloc(str->data, newlen);
	str->maxlen = newlen;
}

void
appendBinaryStringInfo(StringInfo str, const char *data, int datalen)
{
	enlargeStringInfo(str, datalen);
	memcpy(str->data + str->len, data, datalen);
	str->len += datalen;
	str->data[str->len] = '\0';
}

void
appendBinaryStringInfoNT(StringInfo str, const char *data, int datalen)
{
	enlargeStringInfo(str, datalen);
	memcpy(str->data + str->len, data, datalen);
	str->len += datalen;
}

void
appendStringInfoString(StringInfo str, const char *s)
{
	appendBinaryStringInfo(str, s, strlen(s));
}

void
appendStringInfoChar(StringInfo str, char ch)
{
	if (str->len + 1 >= str->maxlen)
		enlargeStringInfo(str, 1);
	str->data[str->len] = ch;
	str->len++;
	str->data[str->len] = '\0';
}

void
appendStringInfoSpaces(StringInfo str, int count)
{
	if (count > 0)
	{
		enlargeStringInfo(str, count);
		memset(&str->data[str->len], ' ', count);
		str->len += count;
		str->data[str->len] = '\0';
	}
}

/* the reader of kind T sorts a table's column names (port.h maps qsort) */
#undef qsort
void
pg_qsort(void *base, size_t nel, size_t elsize,
		 int (*cmp) (const void *, const void *))
{
	qsort(base, nel, elsize, cmp);
}

/* ---- only registry_decode_message() (JSON output) uses these ---- */

#define UNUSED_STUB(decl) \
decl \
{ \
	fprintf(stderr, "==FUZZ== %s called: only registry_decode_message uses it\n", __func__); \
	abort(); \
}

UNUSED_STUB(void appendStringInfo(StringInfo str, const char *fmt,...))
UNUSED_STUB(void escape_json(StringInfo buf, const char *str))
UNUSED_STUB(Datum jsonb_in(PG_FUNCTION_ARGS))
UNUSED_STUB(Datum DirectFunctionCall1Coll(PGFunction func, Oid collation, Datum arg1))
UNUSED_STUB(struct varlena *pg_detoast_datum_packed(struct varlena *datum))
