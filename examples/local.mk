# examples/local.mk - examples, built by every make so they never rot.
EXAMPLE_LIBS = libctxpool.la $(PTHREAD_LIBS)

noinst_PROGRAMS += examples/request_ids
examples_request_ids_SOURCES = examples/request_ids.c
examples_request_ids_LDADD = $(EXAMPLE_LIBS)
