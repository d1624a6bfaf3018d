# tests/local.mk - the test suite (included from Makefile.am).
#
# Criterion unit tests, one file per component, and plain programs
# (tests/stress/: stress tests, and fence_fallback and fence_refused_at_load,
# which replace syscall())
# that also run under ThreadSanitizer, where Criterion cannot start. Every test links the internal convenience library to reach test hooks.
TEST_LIBS = libctxpool-internal.la $(PTHREAD_LIBS)
TEST_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/src

UNIT_TESTS = \
	tests/test_error \
	tests/test_hamt \
	tests/test_context \
	tests/test_deque \
	tests/test_pool

STRESS_TESTS = \
	tests/stress/deque_stress \
	tests/stress/context_stress \
	tests/stress/fence_fallback \
	tests/stress/fence_refused_at_load \
	tests/stress/helper_sleep \
	tests/stress/inject_stall \
	tests/stress/pool_stress \
	tests/stress/push_wakeup \
	tests/stress/task_stress \
	tests/stress/var_stress \
	tests/stress/wait_any \
	tests/stress/wake_pass_on

EXTRA_DIST += tests/stress/check.h tests/stress/fake_membarrier.h tests/stress/light_rounds.h tests/stress/pause.h tests/stress/watchdog.h tests/exports.sh tests/run-test.sh tests/lsan.supp \
	tests/examples.sh tests/install.sh
LOG_COMPILER = $(SHELL) $(top_srcdir)/tests/run-test.sh
SH_LOG_COMPILER = $(SHELL)
TEST_EXTENSIONS = .sh
check_PROGRAMS += $(STRESS_TESTS)
TESTS += $(STRESS_TESTS)

if HAVE_CRITERION
check_PROGRAMS += $(UNIT_TESTS)
if !TSAN
TESTS += $(UNIT_TESTS)
endif
endif

# Only cp_* may be exported from the shared library.
TESTS += tests/exports.sh
AM_TESTS_ENVIRONMENT = top_builddir='$(top_builddir)'; NM='$(NM)'; export top_builddir NM; \
	LSAN_OPTIONS=suppressions='$(abs_top_srcdir)/tests/lsan.supp'; export LSAN_OPTIONS; \
	MAKE='$(MAKE)'; CC='$(CC)'; PKG_CONFIG='$(PKG_CONFIG)'; SANITIZER_FLAGS='$(SANITIZER_FLAGS)'; \
	export MAKE CC PKG_CONFIG SANITIZER_FLAGS;

# Examples (their output) and the installed library (DESTDIR, pkg-config).
TESTS += tests/examples.sh tests/install.sh

tests_test_hamt_SOURCES = tests/test_hamt.c
tests_test_hamt_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_hamt_CFLAGS = $(AM_CFLAGS) $(CRITERION_CFLAGS)
tests_test_hamt_LDADD = $(TEST_LIBS) $(CRITERION_LIBS)

tests_test_context_SOURCES = tests/test_context.c tests/get_plain.c tests/get_plain.h
tests_test_context_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_context_CFLAGS = $(AM_CFLAGS) $(CRITERION_CFLAGS)
tests_test_context_LDADD = $(TEST_LIBS) $(CRITERION_LIBS)

tests_test_deque_SOURCES = tests/test_deque.c
tests_test_deque_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_deque_CFLAGS = $(AM_CFLAGS) $(CRITERION_CFLAGS)
tests_test_deque_LDADD = $(TEST_LIBS) $(CRITERION_LIBS)

tests_stress_deque_stress_SOURCES = tests/stress/deque_stress.c
tests_stress_deque_stress_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_deque_stress_LDADD = $(TEST_LIBS)

tests_test_pool_SOURCES = tests/test_pool.c
tests_test_pool_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_pool_CFLAGS = $(AM_CFLAGS) $(CRITERION_CFLAGS)
tests_test_pool_LDADD = $(TEST_LIBS) $(CRITERION_LIBS)

tests_stress_pool_stress_SOURCES = tests/stress/pool_stress.c
tests_stress_pool_stress_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_pool_stress_LDADD = $(TEST_LIBS)

tests_stress_push_wakeup_SOURCES = tests/stress/push_wakeup.c
tests_stress_push_wakeup_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_push_wakeup_LDADD = $(TEST_LIBS)

tests_stress_task_stress_SOURCES = tests/stress/task_stress.c
tests_stress_task_stress_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_task_stress_LDADD = $(TEST_LIBS)

tests_stress_wait_any_SOURCES = tests/stress/wait_any.c
tests_stress_wait_any_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_wait_any_LDADD = $(TEST_LIBS)

tests_stress_helper_sleep_SOURCES = tests/stress/helper_sleep.c
tests_stress_helper_sleep_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_helper_sleep_LDADD = $(TEST_LIBS)

tests_stress_inject_stall_SOURCES = tests/stress/inject_stall.c
tests_stress_inject_stall_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_inject_stall_LDADD = $(TEST_LIBS)

tests_test_error_SOURCES = tests/test_error.c
tests_test_error_CPPFLAGS = $(TEST_CPPFLAGS)
tests_test_error_CFLAGS = $(AM_CFLAGS) $(CRITERION_CFLAGS)
tests_test_error_LDADD = $(TEST_LIBS) $(CRITERION_LIBS)

tests_stress_fence_fallback_SOURCES = tests/stress/fence_fallback.c
tests_stress_fence_fallback_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_fence_fallback_LDADD = $(TEST_LIBS)

tests_stress_fence_refused_at_load_SOURCES = tests/stress/fence_refused_at_load.c
tests_stress_fence_refused_at_load_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_fence_refused_at_load_LDADD = $(TEST_LIBS)

tests_stress_context_stress_SOURCES = tests/stress/context_stress.c
tests_stress_context_stress_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_context_stress_LDADD = $(TEST_LIBS)

tests_stress_var_stress_SOURCES = tests/stress/var_stress.c
tests_stress_var_stress_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_var_stress_LDADD = $(TEST_LIBS)

tests_stress_wake_pass_on_SOURCES = tests/stress/wake_pass_on.c
tests_stress_wake_pass_on_CPPFLAGS = $(TEST_CPPFLAGS)
tests_stress_wake_pass_on_LDADD = $(TEST_LIBS)
