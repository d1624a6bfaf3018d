#!/bin/sh
# Runs every example from the build directory and checks its exit status and
# the lines that show its point. Each example also checks itself; this makes
# sure `make check` runs them and that their output stays what the README
# and the man pages describe. Some patterns use a back-reference (\1), which
# GNU grep -E supports.
#
# Environment: top_builddir (the build directory; default .).
# Usage: tests/examples.sh [NAME...]   (default: every example)

builddir=${top_builddir:-.}
failed=0
out=$(mktemp) || exit 99
trap 'rm -f "$out"' EXIT

# run NAME PATTERN...: run examples/NAME; it must exit 0 and print a line
# matching each extended regular expression PATTERN.
run() {
    name=$1
    shift
    prog="$builddir/examples/$name"
    if [ ! -x "$prog" ]; then
        echo "FAIL: $name: $prog not built"
        failed=$((failed + 1))
        return
    fi
    "$prog" >"$out" 2>&1
    status=$?
    sed "s/^/$name: /" "$out"
    bad=""
    [ "$status" -eq 0 ] || bad="exit status $status"
    for pattern in "$@"; do
        grep -q -E -e "$pattern" "$out" || bad="${bad:+$bad; }no line matching /$pattern/"
    done
    if grep -q -E 'ERROR: (Address|Leak|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error:' "$out"; then
        bad="${bad:+$bad; }sanitizer report"
    fi
    if [ -n "$bad" ]; then
        echo "FAIL: $name: $bad"
        failed=$((failed + 1))
    else
        echo "PASS: $name"
    fi
}

ip='127\.0\.0\.1:[0-9]+'

check_one() {
    case $1 in
    request_ids)
        run request_ids \
            '^\[req-1 *\] request 1: part 0 done$' \
            '^\[req-4 *\] request 4: finish$' \
            '^\[req-3 *\] request 3: audit record written$' \
            '^\[- *\] main: request 2 done$' \
            "^\[- *\] main: every audit record is written; the requests' IDs never leaked into main$" \
            '^\[main *\] background thread started by cp_thread_create$' \
            '^ok: 0 line\(s\) with a wrong request ID$' ;;
    lifespan)
        run lifespan \
            "^  alice handler saw config: yes, database: yes, another's user: no; keeps user=alice$" \
            "^  bob   handler saw config: yes, database: yes, another's user: no; keeps user=bob$" \
            "^  carol handler saw config: yes, database: yes, another's user: no; keeps user=carol$" \
            '^  app holds no user; the one database served 3 queries$' \
            '^  database closed 1 time\(s\)' \
            '^  snapshot 1: handler sees stage "config loaded", config: yes$' \
            '^  snapshot 3: handler sees stage "cache warm", config: yes$' \
            '^ok: every handler saw' ;;
    echo_server)
        run echo_server \
            "^echo server listening on $ip, 4 clients at once$" \
            "^client 1 from ($ip) +got \"Good bye, client @ \\1\"$" \
            "^client 2 from ($ip) +got \"Good bye, client @ \\1\"$" \
            "^client 3 from ($ip) +got \"Good bye, client @ \\1\"$" \
            "^client 4 from ($ip) +got \"Good bye, client @ \\1\"$" \
            '^ok: each of the 4 clients got its own address back' ;;
    tls_to_context)
        run tls_to_context \
            '^  job B expects the default \(2\): +total = 59\.970000$' \
            '^  job B expects the default \(2\): +total = 59\.97$' \
            "^  job C expects its submitter's 3: +e += 2\.718$" \
            '^ok: with __thread, job A.s precision leaked' ;;
    fork_join)
        run fork_join \
            '^sorted: yes \(compared with qsort\)' \
            '^leaves that saw trace ID trace-4bf92f35: ([0-9]+) of \1$' \
            '^ok: every leaf saw the trace ID' ;;
    *)
        echo "FAIL: $1: no such example"
        failed=$((failed + 1)) ;;
    esac
}

[ $# -gt 0 ] || set -- request_ids lifespan echo_server tls_to_context fork_join
for example in "$@"; do
    check_one "$example"
done

[ "$failed" -eq 0 ] || { echo "examples: $failed failed"; exit 1; }
echo "examples: all passed"
