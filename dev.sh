#!/bin/sh
# dev.sh - set up, build and run ctxpool from a fresh checkout.
#
#   ./dev.sh demo    install what is missing, build, run the demo
#   ./dev.sh test    install what is missing, then the whole test suite:
#                    a normal build (make check, including the examples and
#                    an install test; then make check under valgrind), an
#                    ASan+UBSan build, a TSan build, the fuzzer for
#                    FUZZ_SECONDS (default 60), and make distcheck
#
# On Debian or Ubuntu as root (or with sudo) it installs the packages it
# needs with apt-get. Builds go to build/<kind>/ beside this script.
set -eu

top=$(cd "$(dirname "$0")" && pwd)
cd "$top"
jobs=$(nproc 2>/dev/null || echo 2)

build_packages="autoconf automake libtool pkg-config autoconf-archive make gcc libcriterion-dev"
test_packages="valgrind clang libclang-rt-14-dev g++ libglib2.0-dev libuv1-dev libtbb-dev"

say() { printf '\n=== %s\n' "$*"; }

install_packages() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    command -v apt-get >/dev/null || {
        echo "dev.sh: please install:$missing" >&2
        exit 1
    }
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    say "installing:$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
}

bootstrap() {
    [ -x configure ] && [ configure -nt configure.ac ] || ./autogen.sh >/dev/null 2>&1 || ./autogen.sh
}

# configure_build KIND [configure options...]: build/KIND configured and built.
configure_build() {
    kind=$1
    shift
    mkdir -p "build/$kind"
    (cd "build/$kind" &&
        { [ -f Makefile ] || "$top/configure" -q "$@"; } &&
        make -s -j"$jobs" >/dev/null)
}

# Totals of the automake test harness, summed over every run.
passed=0
failed=0
count_results() {
    log="$1/test-suite.log"
    [ -f "$log" ] || return 0
    p=$(sed -n 's/^# PASS: *//p' "$log" | head -n 1)
    f=$(sed -n 's/^# FAIL: *//p' "$log" | head -n 1)
    e=$(sed -n 's/^# ERROR: *//p' "$log" | head -n 1)
    passed=$((passed + ${p:-0}))
    failed=$((failed + ${f:-0} + ${e:-0}))
}

# timed NAME COMMAND...: run a step that is not a test suite, reporting its
# time; counted as one test.
timed() {
    name=$1
    shift
    start=$(date +%s)
    if "$@"; then
        passed=$((passed + 1))
        echo "dev.sh: $name took $(($(date +%s) - start)) s"
    else
        echo "dev.sh: $name failed"
        echo "$passed passed, $((failed + 1)) failed"
        exit 1
    fi
}

# check KIND [make variables...]: make check in build/KIND, reporting time.
check() {
    kind=$1
    shift
    start=$(date +%s)
    status=0
    (cd "build/$kind" && make -s -j"$jobs" check "$@") || status=$?
    count_results "build/$kind"
    echo "dev.sh: $kind: make check took $(($(date +%s) - start)) s"
    if [ "$status" -ne 0 ]; then
        find "build/$kind" -name '*.log' -newer "build/$kind/Makefile" |
            xargs grep -l -E '^(FAIL|ERROR)' 2>/dev/null | head -n 5 |
            while read -r f; do echo "--- $f"; tail -n 40 "$f"; done
        echo "$passed passed, $((failed > 0 ? failed : 1)) failed"
        exit 1
    fi
}

case "${1:-}" in
demo)
    install_packages $build_packages
    bootstrap
    configure_build release
    say "demo: four clients talk to an echo server at once. Each connection's pool job
    sets client_addr once; render_goodbye(), three calls down and given no
    address, reads it from the context, so every client gets its own address back."
    exec build/release/examples/echo_server
    ;;
test)
    install_packages $build_packages $test_packages
    bootstrap
    say "normal build: unit tests, stress programs, examples"
    configure_build release
    check release
    say "valgrind: stress programs and unit tests under memcheck"
    export CP_STRESS_SCALE=0.02 # valgrind runs the stress programs 20-50x slower
    check release LOG_COMPILER="$top/tests/run-test.sh valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect --trace-children=yes"
    unset CP_STRESS_SCALE
    say "AddressSanitizer + UndefinedBehaviorSanitizer build"
    configure_build asan --enable-asan --enable-ubsan
    check asan
    say "ThreadSanitizer build (plain stress programs: Criterion cannot start under TSan)"
    configure_build tsan --enable-tsan
    check tsan
    say "fuzzing contexts and the trie for ${FUZZ_SECONDS:-60} s (libFuzzer, ASan, UBSan)"
    timed fuzz sh -c 'make -s -C build/release fuzz FUZZ_SECONDS="$1" >build/release/fuzz.log 2>&1 ||
        { tail -n 60 build/release/fuzz.log; exit 1; }
        grep -E "^stat::|^Done" build/release/fuzz.log' fuzz "${FUZZ_SECONDS:-60}"
    say "make distcheck: the tarball builds, passes its tests and installs"
    timed distcheck sh -c 'make -s -C build/release distcheck >build/release/distcheck.log 2>&1 ||
        { tail -n 40 build/release/distcheck.log; exit 1; }'
    echo "$passed passed, $failed failed"
    ;;
*)
    echo "usage: $0 demo|test" >&2
    exit 2
    ;;
esac
