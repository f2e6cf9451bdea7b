#!/usr/bin/env bash
# ResNetKit per precision (fp32 OpenBLAS, bf16 and int8 oneDNN: `resnetkit-bench precision`) and OpenVINO (engine
# alone, its default precision; tools/bench_openvino.py) side by side, 2 threads, batch 64, at 49x49 and 96x96;
# then `batch-infer --precision bf16` end to end (TIFF decoding included) against the bf16 engine alone, with a
# 2-class head (tools/two_class_head.py: a pathology model) and with the 1000-class reference model.
# The engines alternate for ROUNDS rounds in one run (other load on a shared machine hits them alike); the
# tables give each one's median img/s. Every table is headed by the machine (CPU model, ISA, OpenBLAS core).
#
#   tools/bench_precision.sh            ROUNDS (3), SECONDS_PER (2), N images for batch-infer (2000),
#                                       PYTHON (python3, needs `pip install openvino`), SKIP_E2E=1
set -euo pipefail
unset OPENBLAS_CORETYPE OPENBLAS_L2_SIZE
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-python3}
ROUNDS=${ROUNDS:-3}
SECONDS_PER=${SECONDS_PER:-2}
N=${N:-2000}
BENCH=$ROOT/.build/release/resnetkit-bench
RESNETKIT=$ROOT/.build/release/resnetkit
MODEL=${MODEL:-$ROOT/../shared/reference/resnet18.safetensors}
[ -x "$BENCH" ] && [ -x "$RESNETKIT" ] || swift build -c release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-precision.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

for round in $(seq "$ROUNDS"); do
    echo "== round $round" >&2
    "$BENCH" precision --model "$MODEL" --sides 49,96 --batches 64 --threads 2 --seconds "$SECONDS_PER" | tee -a "$WORK/log" >&2
    "$PYTHON" tools/bench_openvino.py --sides 49,96 --batches 64 --threads 2 --seconds "$SECONDS_PER" | tee -a "$WORK/log" >&2
done

if [ "${SKIP_E2E:-0}" != 1 ]; then
    # batch-infer end to end on N PCam-like 96x96 TIFFs (crop 96 and 49), each run followed by the engine alone;
    # with a 2-class head (a pathology model: the CSV rows are short) and the 1000-class reference model (every row
    # holds 1000 logits, formatted as text).
    "$PYTHON" tools/python_pipeline.py generate "$WORK/images" "$N" >/dev/null
    "$PYTHON" tools/two_class_head.py "$MODEL" "$WORK/two-class.safetensors"
    for classes in 2 1000; do
        model=$MODEL
        [ "$classes" = 2 ] && model=$WORK/two-class.safetensors
        for crop in 96 49; do
            for round in $(seq "$ROUNDS"); do
                rm -f "$WORK/out.csv"
                rate=$("$RESNETKIT" batch-infer "$WORK/images" --model "$model" --out "$WORK/out.csv" --precision bf16 \
                        --crop "$crop" --batch-size 64 --threads 2 2>&1 | sed -n 's/.*, \([0-9.]*\) images\/s.*/\1/p')
                echo "e2e $classes $crop $rate" | tee -a "$WORK/log" >&2
                "$BENCH" precision --model "$model" --precision bf16 --sides "$crop" --batches 64 --threads 2 \
                    --seconds "$SECONDS_PER" | tee -a "$WORK/log" >&2
            done
        done
    done
fi

"$PYTHON" - "$WORK/log" <<'PY'
import re, statistics, sys
lines = open(sys.argv[1]).read().splitlines()
machine = next(l for l in lines if l.startswith("machine:"))
engines = next(l for l in lines if l.startswith("ResNetKit engines"))
isa = {}
rates = {}   # (engine, side) -> [img/s]
cpu_rates = {}   # (engine, side) -> [img/CPU-s]
e2e = {}
bf16_after_e2e = {}
last_e2e = None
for l in lines:
    m = re.match(r"\s+(bf16|int8) (.+): (\S+)$", l)
    if m: isa.setdefault(m.group(1), {})[m.group(2)] = m.group(3)
    m = re.match(r"\s*(\d+)\s+64\s+(fp32|bf16|int8)\s+([\d.]+)\s+[\d.]+\s+([\d.]+)", l)
    if m:
        key = (m.group(2), int(m.group(1)))
        if last_e2e is not None: bf16_after_e2e.setdefault(last_e2e, []).append(float(m.group(3))); last_e2e = None
        else:
            rates.setdefault(key, []).append(float(m.group(3)))
            cpu_rates.setdefault(key, []).append(float(m.group(4)))
    m = re.match(r"openvino (\d+) 64 ([\d.]+) (\S+) ([\d.]+)", l)
    if m:
        key = (f"OpenVINO ({m.group(3)})", int(m.group(1)))
        rates.setdefault(key, []).append(float(m.group(2)))
        cpu_rates.setdefault(key, []).append(float(m.group(4)))
    m = re.match(r"e2e (\d+) (\d+) ([\d.]+)", l)
    if m:
        last_e2e = (int(m.group(1)), int(m.group(2)))
        e2e.setdefault(last_e2e, []).append(float(m.group(3)))
med = {k: statistics.median(v) for k, v in rates.items()}
cpu_med = {k: statistics.median(v) for k, v in cpu_rates.items()}
print(machine)
print(engines.replace("ResNetKit engines, ", ""))
for p in ("bf16", "int8"):
    for kind, impl in isa.get(p, {}).items(): print(f"  {p} {kind}: {impl}")
print("\nbatch 64, 2 threads, median img/s over the rounds")
names = sorted({k[0] for k in med}, key=lambda n: ["fp32", "bf16", "int8"].index(n) if n in ("fp32", "bf16", "int8") else 9)
print("| engine | 49x49 | 96x96 |\n| --- | ---: | ---: |")
for n in names:
    print(f"| {n if n.startswith('OpenVINO') else 'ResNetKit ' + n} | " + " | ".join(f"{med.get((n, s), float('nan')):.0f}" for s in (49, 96)) + " |")
print("\nimages per CPU-second (moves less under load; an engine that spins while waiting pays for it here)")
print("| engine | 49x49 | 96x96 |\n| --- | ---: | ---: |")
for n in names:
    print(f"| {n if n.startswith('OpenVINO') else 'ResNetKit ' + n} | " + " | ".join(f"{cpu_med.get((n, s), float('nan')):.0f}" for s in (49, 96)) + " |")
ov = next((n for n in names if n.startswith("OpenVINO")), None)
print("\nratios (targets: bf16 >= 1.2x OpenVINO default, int8 >= 1.5x bf16)")
for s in (49, 96):
    parts = []
    if ov and ("bf16", s) in med:
        parts.append(f"bf16/OpenVINO {med[('bf16', s)] / med[(ov, s)]:.2f}x (per CPU-second {cpu_med[('bf16', s)] / cpu_med[(ov, s)]:.2f}x)")
    if ("int8", s) in med and ("bf16", s) in med: parts.append(f"int8/bf16 {med[('int8', s)] / med[('bf16', s)]:.2f}x")
    if ("bf16", s) in med and ("fp32", s) in med: parts.append(f"bf16/fp32 {med[('bf16', s)] / med[('fp32', s)]:.2f}x")
    print(f"  {s}x{s}: " + ", ".join(parts))
if e2e:
    print(f"\n{machine}\nbatch-infer --precision bf16 end to end (decode included) vs the bf16 engine alone (target: within 20 %)")
    print("| classes | crop | batch-infer img/s | engine img/s | ratio |\n| ---: | ---: | ---: | ---: | ---: |")
    for key in sorted(e2e):
        a, b = statistics.median(e2e[key]), statistics.median(bf16_after_e2e.get(key, [float('nan')]))
        print(f"| {key[0]} | {key[1]} | {a:.0f} | {b:.0f} | {a / b:.2f} |")
PY
