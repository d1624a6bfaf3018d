# tests/fuzz/local.mk - the libFuzzer target (included from Makefile.am).
#
# tests/fuzz/fuzz_context.c decodes its input as operations on contexts and
# variables (or, in its second mode, on the HAMT directly with chosen hashes)
# and checks each result against a reference model. It is built two ways:
#
# - `make fuzz`: a libFuzzer binary built on demand with clang (never by
#   `make` or `make check`, so builds without clang are unaffected), which
#   fuzzes for $(FUZZ_SECONDS) seconds from a copy of the seed corpus in a
#   temporary directory (tests/fuzz/corpus is only read). A crash makes it
#   fail; the reproducer is left in tests/fuzz/artifacts/ in the build tree.
#   Save it as tests/fuzz/crashes/<name> so that it stays a test case.
#   `make fuzz-regress` runs that binary once over the corpus and crashes.
# - tests/fuzz/fuzz_replay: the same decoder with a plain main(), built with
#   the configured compiler and sanitizers, run by `make check`: it replays
#   tests/fuzz/corpus/* and tests/fuzz/crashes/* as regression tests.

FUZZ_CC = clang
FUZZ_SECONDS = 60
FUZZ_FLAGS = -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer -g -O1
FUZZ_OPTIONS = -timeout=10 -print_final_stats=1
FUZZ_SRCS = \
	$(top_srcdir)/tests/fuzz/fuzz_context.c \
	$(top_srcdir)/src/alloc.c \
	$(top_srcdir)/src/error.c \
	$(top_srcdir)/src/hamt.c \
	$(top_srcdir)/src/fence.c \
	$(top_srcdir)/src/key.c \
	$(top_srcdir)/src/context.c
FUZZ_HDRS = \
	$(top_srcdir)/include/ctxpool.h \
	$(top_srcdir)/src/alloc.h \
	$(top_srcdir)/src/hamt.h \
	$(top_srcdir)/src/fence.h \
	$(top_srcdir)/src/key.h \
	$(top_srcdir)/src/context.h

EXTRA_DIST += tests/fuzz/fuzz_context.c tests/fuzz/corpus tests/fuzz/gen_corpus.py \
	tests/fuzz/run.sh
CLEANFILES += tests/fuzz/fuzz_context

tests/fuzz/fuzz_context: $(FUZZ_SRCS) $(FUZZ_HDRS) config.h
	@$(MKDIR_P) tests/fuzz
	$(AM_V_CC)$(FUZZ_CC) $(FUZZ_FLAGS) -I$(top_srcdir)/include -I$(top_srcdir)/src \
	  -I$(top_builddir) -pthread -o $@ $(FUZZ_SRCS)

fuzz: tests/fuzz/fuzz_context
	$(SHELL) $(top_srcdir)/tests/fuzz/run.sh tests/fuzz/fuzz_context \
	  $(top_srcdir)/tests/fuzz/corpus $(FUZZ_SECONDS) tests/fuzz/artifacts/ \
	  $(FUZZ_OPTIONS)

fuzz-regress: tests/fuzz/fuzz_context
	tests/fuzz/fuzz_context $(top_srcdir)/tests/fuzz/corpus/* \
	  `test -d $(top_srcdir)/tests/fuzz/crashes && ls -d $(top_srcdir)/tests/fuzz/crashes/*`

.PHONY: fuzz fuzz-regress

# The replay program, part of `make check`.
check_PROGRAMS += tests/fuzz/fuzz_replay
TESTS += tests/fuzz/fuzz_replay
tests_fuzz_fuzz_replay_SOURCES = tests/fuzz/fuzz_context.c
tests_fuzz_fuzz_replay_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/src -DCP_FUZZ_STANDALONE
tests_fuzz_fuzz_replay_LDADD = libctxpool-internal.la $(PTHREAD_LIBS)
