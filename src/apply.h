/*-------------------------------------------------------------------------
 *
 * apply.h
 *	  apply.c's entry points beyond those still declared in registry.h:
 *	  naming the peer whose rows are applied, for the error context.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_APPLY_H
#define REGISTRY_APPLY_H

/*
 * Name the peer whose rows the following apply_row(), apply_rows_bulk()
 * and apply_rows_fresh() calls write (NULL: none).  While a peer is named,
 * every error or warning raised during those calls carries a CONTEXT line
 * naming the peer, the table, and the row's key, version and origin.
 */
extern void apply_set_peer(const char *peer);

#endif							/* REGISTRY_APPLY_H */
