#!/bin/sh
# run.sh - fuzz for a while from a copy of the seed corpus (used by `make fuzz`).
#
# usage: run.sh FUZZER SEED_DIR SECONDS ARTIFACT_PREFIX [libFuzzer options...]
# The working corpus lives in a temporary directory, so the seed directory is
# only read. Exits with libFuzzer's status: non-zero when it found a crash,
# whose reproducer is then in ARTIFACT_PREFIX (a directory ending in "/").
fuzzer=$1 seeds=$2 seconds=$3 artifacts=$4
shift 4 || exit 2
work=$(mktemp -d) || exit 99
trap 'rm -rf "$work"' EXIT
cp "$seeds"/* "$work"/ || exit 99
mkdir -p "$artifacts" || exit 99
"$fuzzer" -max_total_time="$seconds" -artifact_prefix="$artifacts" "$@" "$work"
status=$?
if [ "$status" -ne 0 ]; then
    echo "run.sh: the fuzzer failed (status $status); reproducer in $artifacts" >&2
    echo "run.sh: save it as tests/fuzz/crashes/<name> so that it stays a test" >&2
fi
exit "$status"
