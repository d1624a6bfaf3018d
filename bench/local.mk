# bench/local.mk - benchmarks: built by every make (and so by make check)
# so they never rot, run only by `make bench` (bench/run). A peer's program is
# built only when configure found the peer; bench/run skips missing ones.
BENCH_COMMON = bench/harness.c bench/harness.h bench/workloads.h
BENCH_LIBS = libctxpool.la $(PTHREAD_LIBS)

noinst_PROGRAMS += bench/bench_context bench/bench_pool
EXTRA_DIST += bench/run

# The floors of workloads 1 (a __thread read behind a shared-library call)
# and fib30 (a bare spawn and sync, a call each). -rpath makes libtool build
# it shared although it is never installed; bench_pool_static (libtool
# -static) links its archive.
noinst_LTLIBRARIES += bench/libfloor.la
bench_libfloor_la_SOURCES = bench/floor.c bench/floor_task.c bench/floor.h
bench_libfloor_la_CFLAGS = $(AM_CFLAGS) $(BENCH_ALIGN_CFLAGS)
bench_libfloor_la_LDFLAGS = -rpath $(abs_builddir)/bench -avoid-version -no-undefined

bench_bench_context_SOURCES = bench/bench_context.c $(BENCH_COMMON)
bench_bench_context_CFLAGS = $(AM_CFLAGS) $(BENCH_ALIGN_CFLAGS)
bench_bench_context_LDADD = bench/libfloor.la $(BENCH_LIBS)

bench_bench_pool_SOURCES = bench/bench_pool.c bench/mutex_pool.c bench/mutex_pool.h \
	$(BENCH_COMMON)
bench_bench_pool_LDADD = bench/libfloor.la $(BENCH_LIBS)

# The same program with the library's static archive linked in (libtool
# -static), for workload fib30-static: what the shared library's calls cost.
if HAVE_STATIC
noinst_PROGRAMS += bench/bench_pool_static
bench_bench_pool_static_SOURCES = $(bench_bench_pool_SOURCES)
bench_bench_pool_static_CPPFLAGS = $(AM_CPPFLAGS) -DBENCH_STATIC
bench_bench_pool_static_LDFLAGS = $(AM_LDFLAGS) -static
bench_bench_pool_static_LDADD = $(bench_bench_pool_LDADD)
endif

if HAVE_GLIB
noinst_PROGRAMS += bench/bench_glib
bench_bench_glib_SOURCES = bench/bench_glib.c $(BENCH_COMMON)
bench_bench_glib_CFLAGS = $(AM_CFLAGS) $(GLIB_CFLAGS)
bench_bench_glib_LDADD = $(GLIB_LIBS) $(PTHREAD_LIBS)
endif

if HAVE_LIBUV
noinst_PROGRAMS += bench/bench_uv
bench_bench_uv_SOURCES = bench/bench_uv.c $(BENCH_COMMON)
bench_bench_uv_CFLAGS = $(AM_CFLAGS) $(LIBUV_CFLAGS)
bench_bench_uv_LDADD = $(LIBUV_LIBS) $(PTHREAD_LIBS)
endif

if HAVE_OPENMP
noinst_PROGRAMS += bench/bench_omp
bench_bench_omp_SOURCES = bench/bench_omp.c $(BENCH_COMMON)
bench_bench_omp_CFLAGS = $(AM_CFLAGS) $(OPENMP_CFLAGS)
bench_bench_omp_LDFLAGS = $(AM_LDFLAGS) $(OPENMP_CFLAGS)
bench_bench_omp_LDADD = $(PTHREAD_LIBS)
endif

if HAVE_TBB
noinst_PROGRAMS += bench/bench_tbb
bench_bench_tbb_SOURCES = bench/bench_tbb.cc $(BENCH_COMMON)
bench_bench_tbb_CXXFLAGS = $(WARN_CXXFLAGS) $(PTHREAD_CFLAGS) $(SANITIZER_FLAGS)
bench_bench_tbb_LDADD = $(TBB_LIBS) $(PTHREAD_LIBS)
endif

# Run every workload for every implementation built, from the build tree.
# BENCH_OUT (default bench/results.tsv) and BENCH_RUNS (default 7) pass on.
bench: all
	CC='$(CC)' CFLAGS='$(CFLAGS) $(PTHREAD_CFLAGS)' CXX='$(CXX)' CXXFLAGS='$(CXXFLAGS)' \
	$(SHELL) $(top_srcdir)/bench/run -b '$(abs_top_builddir)' $${BENCH_OUT:+-o "$$BENCH_OUT"}
.PHONY: bench
