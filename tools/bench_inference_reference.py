#!/usr/bin/env python3
"""ONNX Runtime and PyTorch inference throughput on the same weights as resnetkit-bench.

Usage: tools/bench_inference_reference.py [--onnx FILE] [--safetensors FILE] [--batches 16,64] [--sides 49,96]
Prints the same table as `resnetkit-bench infer`. Either runtime is skipped when it is not installed.
"""
import argparse, os, time

def timed(fn, seconds):
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 3:
        fn(); n += 1
    return n, time.perf_counter() - start

def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ref = os.path.join(here, "..", "..", "shared", "reference")
    ap.add_argument("--onnx", default=None,
                    help="ONNX model with dynamic spatial axes (default: exported from --safetensors with PyTorch)")
    ap.add_argument("--safetensors", default=os.path.join(ref, "resnet18.safetensors"))
    ap.add_argument("--batches", default="16,64")
    ap.add_argument("--sides", default="49,96")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import numpy as np
    batches = [int(x) for x in a.batches.split(",")]
    sides = [int(x) for x in a.sides.split(",")]
    if a.onnx is None:
        # The reference ONNX has a fixed 96x96 input; export one with dynamic batch and spatial axes.
        import tempfile, torch, torchvision
        from safetensors.torch import load_file
        state = load_file(a.safetensors)
        model = torchvision.models.resnet18(num_classes=state["fc.weight"].shape[0])
        model.load_state_dict(state)
        a.onnx = os.path.join(tempfile.mkdtemp(), "resnet18-dynamic.onnx")
        torch.onnx.export(model.eval(), torch.rand(1, 3, 96, 96), a.onnx, dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}})
    try:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        print(f"ONNX Runtime {ort.__version__}, {a.threads} threads, model {a.onnx}")
        print("batch  side   img/s    ms/batch")
        for side in sides:
            for b in batches:
                x = np.random.rand(b, 3, side, side).astype(np.float32)
                n, t = timed(lambda: sess.run(None, {name: x}), a.seconds)
                print(f"{b:5d}  {side:4d}  {n*b/t:7.1f}  {1000*t/n:9.1f}")
    except ImportError:
        print("ONNX Runtime not installed: skipped")
    try:
        import torch, torchvision
        from safetensors.torch import load_file
        torch.set_num_threads(a.threads)
        state = load_file(a.safetensors)
        model = torchvision.models.resnet18(num_classes=state["fc.weight"].shape[0])
        model.load_state_dict(state)
        model.eval()
        print(f"PyTorch {torch.__version__} eager, {a.threads} threads")
        print("batch  side   img/s    ms/batch")
        with torch.inference_mode():
            for side in sides:
                for b in batches:
                    x = torch.rand(b, 3, side, side)
                    n, t = timed(lambda: model(x), a.seconds)
                    print(f"{b:5d}  {side:4d}  {n*b/t:7.1f}  {1000*t/n:9.1f}")
    except ImportError:
        print("PyTorch not installed: skipped")

if __name__ == "__main__":
    main()
