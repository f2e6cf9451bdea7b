#!/usr/bin/env python3
"""OpenVINO inference throughput, engine alone, at its default precision (what a user who picks it gets).

Usage: tools/bench_openvino.py [--onnx FILE] [--batches 64] [--sides 49,96] [--seconds S] [--threads 2]
Prints `openvino SIDE BATCH IMG_PER_S PRECISION IMG_PER_CPU_S` lines (tools/bench_precision.sh reads them);
images per CPU-second (this process's user + system time) move less than img/s when other work shares the machine.
The model is converted with openvino.convert_model from the reference ONNX file and reshaped per input size.
"""
import argparse, os, time

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--onnx", default=os.path.join(here, "..", "..", "shared", "reference", "resnet18.onnx"))
    ap.add_argument("--batches", default="64")
    ap.add_argument("--sides", default="49,96")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import numpy as np
    import openvino as ov
    core = ov.Core()
    print(f"OpenVINO {ov.__version__}, {a.threads} threads, default precision, model {a.onnx}")
    for side in [int(s) for s in a.sides.split(",")]:
        for batch in [int(b) for b in a.batches.split(",")]:
            model = ov.convert_model(a.onnx)
            model.reshape([batch, 3, side, side])
            compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": a.threads})
            hint = compiled.get_property("INFERENCE_PRECISION_HINT")
            precision = hint.to_string() if hasattr(hint, "to_string") else str(hint).replace(" ", "")
            request = compiled.create_infer_request()
            x = np.random.rand(batch, 3, side, side).astype(np.float32)
            request.infer({0: x})  # warm-up
            n, start, cpu_start = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - start < a.seconds or n < 3:
                request.infer({0: x})
                n += 1
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            print(f"openvino {side} {batch} {n * batch / elapsed:.1f} {precision} {n * batch / cpu:.1f}")

if __name__ == "__main__":
    main()
