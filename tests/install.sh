#!/bin/sh
# Installs ctxpool into a temporary DESTDIR, checks that the library, the
# header, ctxpool.pc and the man pages are there, then builds a small program
# outside the tree with `pkg-config --cflags --libs ctxpool` and runs it
# against the installed library. Needs no root.
#
# Environment:
#   top_builddir     the configured build directory (default .)
#   MAKE             make to run there (default make)
#   CC               the C compiler (default cc)
#   PKG_CONFIG       pkg-config (default pkg-config); missing: the test skips
#   SANITIZER_FLAGS  the build's sanitizer flags, for the outside program too
set -u

builddir=${top_builddir:-.}
make_cmd=${MAKE:-make}
cc=${CC:-cc}
pkg_config=${PKG_CONFIG:-pkg-config}
sanitizer_flags=${SANITIZER_FLAGS:-}

command -v "$pkg_config" >/dev/null 2>&1 ||
    { echo "install: $pkg_config not found"; exit 77; }

tmp=$(mktemp -d) || exit 99
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT
destdir="$tmp/dest"

fail() {
    echo "FAIL: install: $*"
    exit 1
}

# 1. make install DESTDIR=... (not a recursive make of this test's own
# make: drop its flags, which may carry a jobserver this shell cannot use).
(cd "$builddir" && env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL \
    $make_cmd install DESTDIR="$destdir" >"$tmp/install.log" 2>&1) ||
    { cat "$tmp/install.log"; fail "make install DESTDIR=$destdir failed"; }

# 2. What must be installed, wherever the configured directories point.
found() { find "$destdir" -name "$1" \( -type f -o -type l \) | head -n 1; }
header=$(found ctxpool.h)
pc=$(found ctxpool.pc)
[ -n "$header" ] || fail "ctxpool.h not installed"
[ -n "$pc" ] || fail "ctxpool.pc not installed"
lib=$(found 'libctxpool.so')
[ -n "$lib" ] || lib=$(found 'libctxpool.a')
[ -n "$lib" ] || fail "libctxpool not installed"
libdir=$(dirname "$lib")
for page in ctxpool cp_var cp_context cp_pool cp_future cp_spawn cp_pool_submit; do
    file=$(found "$page.3*")
    [ -n "$file" ] || fail "man page $page(3) not installed"
    [ -s "$file" ] || fail "man page $file is empty"
done
echo "install: header, library, ctxpool.pc and man pages installed under $destdir"

# 3. A program from outside the tree, built the way a user builds it.
cat >"$tmp/outside.c" <<'EOF'
#include <ctxpool.h>
#include <stdio.h>
#include <string.h>

static cp_var *who;

static void *job(void *arg)
{
    (void)arg;
    return cp_var_get_or(who, "nobody");
}

int main(void)
{
    cp_pool *pool;
    cp_future *f;
    void *seen = NULL;
    who = cp_var_new("who", NULL);
    if (!who || cp_pool_new(&pool, NULL) != 0)
        return 1;
    cp_var_set(who, "installed", NULL);
    if (cp_pool_submit(pool, job, NULL, &f) != 0 || cp_future_wait(f, &seen) != 0)
        return 1;
    cp_future_free(f);
    cp_pool_free(pool);
    cp_var_free(who);
    printf("ctxpool %d.%d.%d: the job saw \"%s\"\n", CP_VERSION_MAJOR,
           CP_VERSION_MINOR, CP_VERSION_PATCH, (const char *)seen);
    /* The installed library is the version its header says. */
    return strcmp(seen, "installed") != 0 || cp_version() != CP_VERSION_NUMBER;
}
EOF

static=""
case $lib in *.a) static="--static" ;; esac
# The sysroot puts DESTDIR in front of the -I and -L paths of ctxpool.pc.
flags=$(PKG_CONFIG_PATH=$(dirname "$pc") PKG_CONFIG_SYSROOT_DIR="$destdir" \
    "$pkg_config" $static --cflags --libs ctxpool) ||
    fail "pkg-config --cflags --libs ctxpool failed"
echo "install: pkg-config --cflags --libs ctxpool: $flags"
case $flags in *"$destdir"*) ;; *) fail "pkg-config flags do not point into DESTDIR" ;; esac
# shellcheck disable=SC2086 # flags are words
(cd "$tmp" && $cc $sanitizer_flags -o outside outside.c $flags) ||
    fail "could not build a program with the installed ctxpool"

output=$(LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$tmp/outside" 2>&1)
status=$?
echo "install: outside program: $output"
[ "$status" -eq 0 ] || fail "the outside program exited with $status"
# The header's CP_VERSION_* must agree with the version in ctxpool.pc.
version=$(PKG_CONFIG_PATH=$(dirname "$pc") "$pkg_config" --modversion ctxpool)
[ "$output" = "ctxpool $version: the job saw \"installed\"" ] ||
    fail "expected 'ctxpool $version: the job saw \"installed\"'"
# It must have run against the installed library, not the build tree's.
if command -v ldd >/dev/null 2>&1 && [ -z "$static" ]; then
    LD_LIBRARY_PATH="$libdir" ldd "$tmp/outside" | grep -q "$libdir/libctxpool" ||
        fail "the outside program did not load the installed libctxpool"
fi
echo "install: ok"
