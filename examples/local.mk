# examples/local.mk - examples, built by every make so they never rot.
# tests/examples.sh runs each one and checks what it prints.
EXAMPLE_LIBS = libctxpool.la $(PTHREAD_LIBS)

noinst_PROGRAMS += \
	examples/request_ids \
	examples/lifespan \
	examples/echo_server \
	examples/tls_to_context \
	examples/fork_join

examples_request_ids_SOURCES = examples/request_ids.c
examples_request_ids_LDADD = $(EXAMPLE_LIBS)

examples_lifespan_SOURCES = examples/lifespan.c
examples_lifespan_LDADD = $(EXAMPLE_LIBS)

examples_echo_server_SOURCES = examples/echo_server.c
examples_echo_server_LDADD = $(EXAMPLE_LIBS)

examples_tls_to_context_SOURCES = examples/tls_to_context.c
examples_tls_to_context_LDADD = $(EXAMPLE_LIBS)

examples_fork_join_SOURCES = examples/fork_join.c
examples_fork_join_LDADD = $(EXAMPLE_LIBS)
