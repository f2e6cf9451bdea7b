#!/usr/bin/env bash
# The test suite, in release mode: the numeric tests (PyTorch parity, training trajectories) are far too slow
# in a debug build. Tests read ../shared/reference beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --build-tests
swift test -c release --skip-build
