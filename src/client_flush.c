/*-------------------------------------------------------------------------
 *
 * client_flush.c
 *	  This backend's client connection, outside the protocol's own loop:
 *	  sending what the backend holds for its client now, rather than when
 *	  the next message fills the send buffer; and waiting for the client's
 *	  next input during a request.
 *
 * registry.table_pages() returns one large page per call; the executor
 * writes each to the client, but its last few kilobytes stay in the send
 * buffer until more output follows, so the peer could not apply a page
 * while the next one is being read.
 *
 * A long poll (registry.changes_since() holding a request) ends when the
 * client sends more: a client in pipeline mode sends a second Sync when
 * it wants the answer now (docs/protocol.md 6.2).
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
#include "miscadmin.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"

#include "registry.h"

/* Send what the client connection holds; nothing for other callers. */
void
registry_flush_client(void)
{
	if (whereToSendOutput == DestRemote)
		pq_flush();
}

/* Whether this backend has a client whose input registry_client_wait() sees. */
bool
registry_client_watchable(void)
{
	return whereToSendOutput == DestRemote && FeBeWaitSet != NULL;
}

/*
 * Wait up to timeout_ms for this backend's latch (reset here) or for input
 * from its client; true if the client sent something or went away.  Uses
 * the backend's own wait set for its client socket, as pq_check_connection()
 * does: the protocol's reads and writes set the socket's event they need
 * before they wait, so changing it here is safe.
 */
bool
registry_client_wait(long timeout_ms, uint32 wait_event_info)
{
	WaitEvent	ev[FeBeWaitSetNEvents];
	bool		input = false;
	int			n;
	int			i;

	Assert(registry_client_watchable());
	ModifyWaitEvent(FeBeWaitSet, FeBeWaitSetSocketPos, WL_SOCKET_READABLE, NULL);
	n = WaitEventSetWait(FeBeWaitSet, timeout_ms, ev, lengthof(ev), wait_event_info);
	for (i = 0; i < n; i++)
	{
		if (ev[i].events & WL_POSTMASTER_DEATH)
			ereport(FATAL,
					(errcode(ERRCODE_ADMIN_SHUTDOWN),
					 errmsg("terminating connection due to unexpected postmaster exit")));
		if (ev[i].events & WL_SOCKET_READABLE)
			input = true;
		if (ev[i].events & WL_LATCH_SET)
			ResetLatch(MyLatch);
	}
	return input;
}
