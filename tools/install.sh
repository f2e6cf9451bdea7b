#!/usr/bin/env bash
# One command from nothing to a working ResNetKit on Debian/Ubuntu:
#   1. the native libraries (Debian -dev packages),
#   2. a release build,
#   3. `resnetkit` plus the links `import-weights`, `batch-infer`, `fine-tune` in $PREFIX/bin (default /usr/local),
#   4. the main job on the embedded default model and images under fixtures/ (output in ./out/).
# Usage: tools/install.sh [--no-apt] [--no-demo]     (PREFIX=/some/where tools/install.sh to install elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
apt=1 demo=1
for arg in "$@"; do
    case "$arg" in
        --no-apt) apt=0 ;;
        --no-demo) demo=0 ;;
        *) echo "usage: tools/install.sh [--no-apt] [--no-demo]" >&2; exit 2 ;;
    esac
done

if [[ $apt == 1 ]]; then
    sudo=""; [[ $(id -u) == 0 ]] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libopenblas-dev libhdf5-dev libtiff-dev libprotobuf-c-dev libpng-dev libdnnl-dev pkg-config >/dev/null
fi

command -v swift >/dev/null || { echo "error: swift is not on PATH (install Swift 6 from swift.org)" >&2; exit 1; }
swift build -c release --product resnetkit

mkdir -p "$PREFIX/bin"
install -m 755 .build/release/resnetkit "$PREFIX/bin/resnetkit"
for name in import-weights batch-infer fine-tune; do
    ln -sf resnetkit "$PREFIX/bin/$name"
done
echo "installed $PREFIX/bin/resnetkit (+ import-weights, batch-infer, fine-tune)"

if [[ $demo == 1 ]]; then
    tools/demo.sh "$PREFIX/bin/resnetkit"
fi
