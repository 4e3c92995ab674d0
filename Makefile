# Makefile for the registry extension (PGXS).
#
#   make && make install          build and install into the PostgreSQL found
#                                 by pg_config
#   make installcheck             pg_regress suite (own temporary instance)
#                                 and TAP suite (t/*.pl)
#
# The test build adds -Wall -Werror (see scripts/test).

MODULE_big = registry
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard src/*.c)))
PGFILEDESC = "registry - replicated multi-master registry tables"

EXTENSION = registry
DATA = registry--1.0.sql

REGRESS = setup registration keys capture clock serving messages apply views permissions leases clientapi
REGRESS_OPTS = --temp-instance=./tmp_regress --temp-config=$(srcdir)/sql/regress.conf \
	--load-extension=plpgsql --encoding=UTF8
TAP_TESTS = 1

PG_CONFIG ?= pg_config
PG_CPPFLAGS = -I$(srcdir)/src -I$(shell $(PG_CONFIG) --includedir)
SHLIB_LINK_INTERNAL = -L$(shell $(PG_CONFIG) --libdir) -lpq
SHLIB_LINK = -lz

# Export only what PostgreSQL looks up by name (_PG_init, Pg_magic_func, the
# SQL-callable functions and their pg_finfo_ records, the background worker
# entry points): scripts/exports lists them from registry--1.0.sql and the
# objects, and PGXS turns the list into a linker version script
# (exports.list); every other global stays inside registry.so.
SHLIB_EXPORTS = exports.txt

# (before the include: pgxs.mk tests it with ifdef)
EXTRA_CLEAN = tmp_regress tmp_check results regression.diffs regression.out \
	exports.txt exports.txt.tmp

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS does not track header dependencies here: rebuild everything when a
# header changes (shared memory layouts live in headers).
$(OBJS): $(wildcard $(srcdir)/src/*.h)

exports.txt: $(OBJS) $(srcdir)/registry--1.0.sql $(srcdir)/scripts/exports
	$(SHELL) $(srcdir)/scripts/exports $(srcdir)/registry--1.0.sql $(srcdir)/src $(OBJS) >$@.tmp
	mv $@.tmp $@
