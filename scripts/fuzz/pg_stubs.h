/*
 * pg_stubs.h: the few PostgreSQL backend services src/message.c links
 * against, reimplemented for a standalone program (scripts/fuzz/pg_stubs.c):
 * a per-input allocator that counts bytes, ereport(ERROR) as a longjmp,
 * UTF-8 validation.  Used by decoder_fuzz.c and gen_corpus.c; built by
 * scripts/fuzz/run.
 */
#ifndef FUZZ_PG_STUBS_H
#define FUZZ_PG_STUBS_H

/*
 * Included after postgres.h and the project's headers: the fuzzer's own
 * code uses the C library's printf family, not src/port's.
 */
#undef vsnprintf
#undef snprintf
#undef sprintf
#undef vfprintf
#undef fprintf
#undef printf

#include <setjmp.h>
#include <stdio.h>
#include <stddef.h>
#include <stdbool.h>

/* ---- allocator ---- */

/*
 * Start an input: everything palloc'd from now on is counted, and
 * freed by stub_alloc_reset().  limit: abort() if the bytes allocated
 * (cumulatively, pfree'd or not) ever exceed it; 0 = no limit.
 */
extern void stub_alloc_begin(size_t limit);
/* free everything allocated since stub_alloc_begin() */
extern void stub_alloc_reset(void);
/* bytes allocated since stub_alloc_begin() (pfree does not subtract) */
extern size_t stub_alloc_total(void);
/* largest single request since stub_alloc_begin() */
extern size_t stub_alloc_largest(void);
/* while false, allocations are not counted (still freed by reset) */
extern void stub_alloc_counting(bool on);

/* ---- ereport(ERROR) ---- */

/*
 * STUB_TRY(): true the first time; ereport(ERROR) longjmps back to it and
 * it is then false, with stub_error_message() describing the error.
 */
extern jmp_buf *stub_error_jmp;
extern const char *stub_error_message(void);
extern int	stub_error_sqlstate(void);
extern int	stub_error_count_by_level(int elevel);

#define STUB_TRY(jb) (stub_error_jmp = &(jb), setjmp(jb) == 0)
#define STUB_END_TRY() (stub_error_jmp = NULL)

/* the database encoding the stubs report (PG_UTF8 by default) */
extern void stub_set_encoding(int encoding);

/* for tests of the stubs themselves */
extern bool stub_utf8_valid(const unsigned char *s, int len);

#endif
