# doc/local.mk - man pages (included from Makefile.am), installed by
# `make install` in $(man3dir). One page per family; every function has a
# one-line page (.so) that points at its family's page, so `man cp_var_set`
# works.
MAN_FAMILIES = \
	doc/ctxpool.3 \
	doc/cp_var.3 \
	doc/cp_context.3 \
	doc/cp_pool.3 \
	doc/cp_future.3 \
	doc/cp_spawn.3

MAN_LINKS = \
	doc/cp_context_contains.3 \
	doc/cp_context_copy.3 \
	doc/cp_context_equal.3 \
	doc/cp_context_free.3 \
	doc/cp_context_get.3 \
	doc/cp_context_get_or.3 \
	doc/cp_context_iter.3 \
	doc/cp_context_len.3 \
	doc/cp_context_new.3 \
	doc/cp_context_run.3 \
	doc/cp_copy_context.3 \
	doc/cp_future_cancel.3 \
	doc/cp_future_done.3 \
	doc/cp_future_free.3 \
	doc/cp_future_wait.3 \
	doc/cp_future_wait_any.3 \
	doc/cp_future_wait_timeout.3 \
	doc/cp_iter_free.3 \
	doc/cp_iter_next.3 \
	doc/cp_pool_free.3 \
	doc/cp_pool_get_stats.3 \
	doc/cp_pool_new.3 \
	doc/cp_pool_shutdown.3 \
	doc/cp_pool_submit.3 \
	doc/cp_pool_submit_in.3 \
	doc/cp_pool_wait_idle.3 \
	doc/cp_strerror.3 \
	doc/cp_sync.3 \
	doc/cp_thread_create.3 \
	doc/cp_token_free.3 \
	doc/cp_token_old_value.3 \
	doc/cp_token_var.3 \
	doc/cp_var_free.3 \
	doc/cp_var_get.3 \
	doc/cp_var_get_or.3 \
	doc/cp_var_name.3 \
	doc/cp_var_new.3 \
	doc/cp_var_new_default.3 \
	doc/cp_var_reset.3 \
	doc/cp_var_set.3 \
	doc/cp_version.3

dist_man3_MANS = $(MAN_FAMILIES) $(MAN_LINKS)
