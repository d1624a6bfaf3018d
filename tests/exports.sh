#!/bin/sh
# Fails if the shared library exports any symbol that does not start with cp_.
lib="${top_builddir:-.}/.libs/libctxpool.so"
[ -f "$lib" ] || { echo "exports: $lib not built (static-only build?)"; exit 77; }
defined=$(${NM:-nm} -D --defined-only "$lib" | awk '{print $3}')
[ -n "$defined" ] || { echo "exports: no symbols read from $lib"; exit 1; }
bad=$(printf '%s\n' "$defined" | grep -v -E '^cp_[a-z]' || true)
if [ -n "$bad" ]; then
    echo "exports: symbols outside cp_* exported from $lib:"
    printf '%s\n' "$bad"
    exit 1
fi
printf '%s\n' "$defined" | grep -q -x cp_var_new || { echo "exports: cp_var_new missing"; exit 1; }
echo "exports: $(printf '%s\n' "$defined" | wc -l) symbols, all cp_*"
