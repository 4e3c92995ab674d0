/*-------------------------------------------------------------------------
 *
 * capture.h
 *	  The row triggers of registry tables (capture.c): registry_stamp,
 *	  registry_capture and registry_capture_truncate are SQL-callable; the
 *	  one C entry point is below.  Modes and publication: publish.h.
 *
 *-------------------------------------------------------------------------
 */
#ifndef REGISTRY_CAPTURE_H
#define REGISTRY_CAPTURE_H

#include "registry.h"

extern void capture_stamp_existing(RegTable *t);

#endif							/* REGISTRY_CAPTURE_H */
