#!/bin/sh
# Regenerates Sources/ONNXProto (the C code for ONNX's protobuf messages) with protoc-c.
# Needs Debian's protobuf-c-compiler and the onnx.proto shipped in the onnx Python wheel.
# Usage: tools/generate_onnx_proto.sh [path/to/onnx.proto]
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
proto=${1:-/opt/pyref/lib/python3.11/site-packages/onnx/onnx.proto}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$proto" "$work/onnx.proto"
(cd "$work" && protoc-c --c_out=. onnx.proto)
out="$root/Sources/ONNXProto"
mkdir -p "$out/include"
# The generated source includes "onnx.pb-c.h"; SwiftPM puts include/ on the C target's header path.
cp "$work/onnx.pb-c.c" "$out/onnx.pb-c.c"
cp "$work/onnx.pb-c.h" "$out/include/onnx.pb-c.h"
cat > "$out/include/module.modulemap" <<'MAP'
module ONNXProto {
    header "onnx.pb-c.h"
    export *
}
MAP
echo "generated from $proto ($(protoc-c --version | head -1))"
