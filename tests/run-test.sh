#!/bin/sh
# Test driver wrapper: runs one test program and fails it on any sanitizer or
# valgrind report in its output, even where the program itself exited 0
# (Criterion runs each test in a child process whose leak report does not
# change the test's result).
log=$(mktemp) || exit 99
"$@" >"$log" 2>&1
status=$?
cat "$log"
if grep -q -E 'ERROR: (Address|Leak|Memory|Thread)Sanitizer|WARNING: ThreadSanitizer|runtime error:|definitely lost: [1-9]|indirectly lost: [1-9]|ERROR SUMMARY: [1-9]' "$log"; then
    echo "run-test: sanitizer or valgrind report in the output of $1"
    [ "$status" -eq 0 ] && status=1
fi
rm -f "$log"
exit "$status"
