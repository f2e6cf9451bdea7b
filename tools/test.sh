#!/usr/bin/env bash
# The test suite, in release mode: the numeric tests (PyTorch parity, training trajectories) are far too slow
# in a debug build. Tests read ../shared/reference beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --build-tests
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# XCTest only: the suite has no Swift Testing tests, and its empty run would close the log with "0 tests".
swift test -c release --skip-build --disable-swift-testing 2>&1 | tee "$log" || status=$?
# One closing line for humans and CI: totals from XCTest's last summary.
summary=$(grep -E 'Executed [0-9]+ tests?, with' "$log" | tail -1)
executed=$(sed -E 's/.*Executed ([0-9]+) tests?.*/\1/' <<<"$summary")
failed=$(sed -E 's/.* ([0-9]+) failures?.*/\1/' <<<"$summary")
skipped=$(grep -oE '[0-9]+ tests? skipped' <<<"$summary" | grep -oE '^[0-9]+' || echo 0)
echo "tests: $((executed - failed - skipped)) passed, $failed failed, $skipped skipped"
exit $status
