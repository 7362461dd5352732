#!/usr/bin/env bash
# run.sh [SECONDS [HARNESS...]]: runs each harness (default: all three) for SECONDS
# (default 60) on one core, then prints what each
# did: executions, coverage (libFuzzer's cov: edges, ft: features), corpus size
# and crashes. Exits 1 if any harness crashed (the inputs are in build/crashes/).
#
# New inputs go to build/corpus/NAME, seeded from the committed corpus/NAME,
# which is read but never written (rerun make_corpus.py to change it).
set -uo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
shift || true
names=${*:-frame msgpack dispatch}
mkdir -p build/crashes build/logs
printf '%-10s %12s %9s %8s %8s %7s %8s\n' harness executions exec/s cov ft corpus crashes
status=0
for name in $names; do
    mkdir -p "build/corpus/$name"
    log="build/logs/$name.log"
    before=$(find build/crashes -name "$name-*" | wc -l)
    # Inputs longer than the largest request frame (512 bytes, 517 encoded) add little
    # but time: a few requests for the dispatcher, a frame and more for the decoder.
    case $name in frame) max_len=1200 ;; msgpack) max_len=1024 ;; dispatch) max_len=2048 ;; esac
    # One process, one core (libFuzzer's default: no -jobs/-workers fan-out).
    "build/fuzz_$name" "build/corpus/$name" "corpus/$name" \
        -dict=agent.dict -max_len="$max_len" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="build/crashes/$name-" >"$log" 2>&1
    rc=$?
    after=$(find build/crashes -name "$name-*" | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
    printf '%-10s %12s %9s %8s %8s %7s %8s\n' "$name" "${execs:-?}" "${rate:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$((after - before))"
    if [ "$rc" -ne 0 ] || [ "$after" -ne "$before" ]; then
        echo "fuzz_$name: exit $rc; see kernel-agent/fuzz/$log and build/crashes/" >&2
        grep -E 'ERROR|runtime error|check failed' "$log" | head -5 >&2
        status=1
    fi
done
exit $status
