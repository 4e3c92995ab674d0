/*-------------------------------------------------------------------------
 *
 * client_flush.c
 *	  Sending what this backend holds for its client now, rather than when
 *	  the next message fills the send buffer.
 *
 * registry.table_pages() returns one large page per call; the executor
 * writes each to the client, but its last few kilobytes stay in the send
 * buffer until more output follows, so the peer could not apply a page
 * while the next one is being read.
 *
 * This is its own file because libpq/libpq.h includes libpq-be.h, which
 * wants the GSSAPI headers when the server was built with GSSAPI (as
 * Debian's is).  Only the send function is used here, never struct Port,
 * whose layout is the only thing those headers change; so GSSAPI is
 * switched off for this file alone instead of adding a build dependency.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#undef ENABLE_GSS
#undef ENABLE_SSPI
#include "libpq/libpq.h"
#include "tcop/tcopprot.h"

#include "registry.h"

/* Send what the client connection holds; nothing for other callers. */
void
registry_flush_client(void)
{
	if (whereToSendOutput == DestRemote)
		pq_flush();
}
