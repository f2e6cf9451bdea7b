#!/usr/bin/env bash
# The test suite, in release mode: the numeric tests (PyTorch parity, training trajectories) are far too slow
# in a debug build. Tests read ../shared/reference beside the repository.
#
# Usage: tools/test.sh [--kernel NAME] [--filter PATTERN]
#   --kernel NAME    run on this OpenBLAS kernel (Prescott, Haswell, SkylakeX, Cooperlake, Zen, ...). By default the
#                    tests run on the kernel the resnetkit command would choose on this machine: the XCTest process
#                    cannot restart itself the way the command does when OpenBLAS falls back to a generic core.
#   --filter PATTERN only the tests whose names match (swift test --filter).
set -euo pipefail
cd "$(dirname "$0")/.."
kernel="" filter=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --kernel) kernel=$2; shift 2 ;;
        --filter) filter=(--filter "$2"); shift 2 ;;
        *) echo "usage: tools/test.sh [--kernel NAME] [--filter PATTERN]" >&2; exit 2 ;;
    esac
done
# -enable-testing: the engine tests reach internal types (@testable); the installed binary is built without it.
swift build -c release --build-tests -Xswiftc -enable-testing
if [[ -z $kernel ]]; then
    kernel=${OPENBLAS_CORETYPE:-$(.build/release/resnetkit system --blas-core)}
fi
export OPENBLAS_CORETYPE=$kernel
echo "tests on OpenBLAS kernel $kernel ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# XCTest only: the suite has no Swift Testing tests, and its empty run would close the log with "0 tests".
swift test -c release --skip-build --disable-swift-testing "${filter[@]}" 2>&1 | tee "$log" || status=$?
# One closing line for humans and CI: totals from XCTest's last summary.
summary=$(grep -E 'Executed [0-9]+ tests?, with' "$log" | tail -1)
executed=$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$summary")
failed=$(sed -E 's/.* ([0-9]+) failures?.*/\1/' <<<"$summary")
skipped=$(grep -oE '[0-9]+ tests? skipped' <<<"$summary" | grep -oE '^[0-9]+' || echo 0)
echo "tests: $((executed - failed - skipped)) passed, $failed failed, $skipped skipped"
exit $status
