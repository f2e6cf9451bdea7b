#!/bin/sh
# Builds the libFuzzer targets (Swift's -sanitize=fuzzer) into .build-fuzz and runs one for a bounded time.
#   tools/fuzz.sh TARGET SECONDS [libFuzzer options…]   TARGET: onnx, json, safetensors, csv, tiff, hdf5, pickle (or FuzzONNX, …)
#   tools/fuzz.sh build               builds them all
# Seeds come from fixtures/ (copied into .build-fuzz/corpus/TARGET, which keeps what the run finds); crashes go to
# .build-fuzz/crashes/TARGET. The last line of the log says how many inputs were run.
set -eu
cd "$(dirname "$0")/.."
scratch=.build-fuzz

build() {
    RESNETKIT_FUZZ=1 swift build -c release --scratch-path "$scratch" \
        -Xswiftc -sanitize=fuzzer -Xswiftc -parse-as-library -Xswiftc -enable-testing "$@"
}

target_name() {
    case "$1" in
        onnx|FuzzONNX) echo FuzzONNX ;;
        json|FuzzJSON) echo FuzzJSON ;;
        safetensors|FuzzSafeTensors) echo FuzzSafeTensors ;;
        csv|FuzzCSV) echo FuzzCSV ;;
        tiff|FuzzTIFF) echo FuzzTIFF ;;
        hdf5|FuzzHDF5) echo FuzzHDF5 ;;
        pickle|FuzzPickle) echo FuzzPickle ;;
        *) echo "unknown target $1 (onnx, json, safetensors, csv, tiff, hdf5, pickle)" >&2; exit 64 ;;
    esac
}

seed() {
    corpus="$scratch/corpus/$1"
    mkdir -p "$corpus"
    case "$1" in
        FuzzONNX) cp fixtures/onnx/*.onnx "$corpus"/ ;;
        FuzzJSON)
            python3 - "$corpus" <<'PY'
import h5py, json, sys, glob, struct, os
out = sys.argv[1]
n = 0
for path in glob.glob("fixtures/hdf5/*.h5") + glob.glob("fixtures/onnx/*.safetensors") + ["fixtures/default-model.safetensors"]:
    try:
        if path.endswith(".h5"):
            with h5py.File(path, "r") as f:
                text = f.attrs.get("model_config")
                texts = [text.decode() if isinstance(text, bytes) else text] if text is not None else []
        else:
            with open(path, "rb") as f:
                size = struct.unpack("<Q", f.read(8))[0]
                texts = list(json.loads(f.read(size)).get("__metadata__", {}).values())
    except Exception:
        continue
    for text in texts:
        if text:
            n += 1
            open(os.path.join(out, "seed%d.json" % n), "w").write(text)
PY
            ;;
        FuzzSafeTensors) cp fixtures/default-model.safetensors fixtures/onnx/*.safetensors "$corpus"/ ;;
        FuzzCSV) cp fixtures/images/*.csv "$corpus"/ 2>/dev/null || true
                 printf 'id,label\na,0\n"b,c",1\n' > "$corpus/labels.csv"
                 printf '\357\273\277image,target\r\nx,1\r\n"q""",0' > "$corpus/bom.csv" ;;
        FuzzHDF5) for f in fixtures/hdf5/*.h5; do [ "$(stat -c %s "$f")" -le 65536 ] && cp "$f" "$corpus"/; done
                  cp fixtures/hdf5/flat.h5 "$corpus"/ ;;
        FuzzTIFF) for f in fixtures/tiff/*.tif fixtures/images/*.tif; do [ -s "$f" ] && cp "$f" "$corpus"/; done ;;
        FuzzPickle) for f in fixtures/pth/*.pth fixtures/pth/*.pt fixtures/pth/*.tar fixtures/pth/*.pkl; do
                        [ "$(stat -c %s "$f")" -le 131072 ] && cp "$f" "$corpus"/; done ;;
    esac
}

if [ "${1:-}" = build ]; then
    for t in FuzzONNX FuzzJSON FuzzSafeTensors FuzzCSV FuzzTIFF FuzzHDF5 FuzzPickle; do build --product "$t"; done
    exit 0
fi
[ $# -ge 2 ] || { echo "usage: tools/fuzz.sh TARGET SECONDS [libFuzzer options…] | tools/fuzz.sh build" >&2; exit 64; }
name=$(target_name "$1")
seconds=$2
shift 2
build --product "$name"
seed "$name"
mkdir -p "$scratch/crashes/$name"
# Swift's own crash handler would take a runtime trap (SIGILL) before libFuzzer, which then saves no crash input.
export SWIFT_BACKTRACE=enable=no
exec "$scratch/release/$name" "$scratch/corpus/$name" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 \
    -max_len=1048576 -artifact_prefix="$scratch/crashes/$name/" -print_final_stats=1 "$@"
