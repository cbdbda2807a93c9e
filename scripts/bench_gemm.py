"""The machine's limit, and how close each CPU backend gets to it: GEMM peak per precision, then each backend's
model-only images/s as a fraction of its precision's peak.

    python scripts/bench_gemm.py --model ViT-B-32 --pretrained none --images ../shared/data/coco_mini/val2017

- GEMM peak: the best GFLOP/s (2 per multiply-add) of a matrix product at ViT-B-32's MLP shape (the batch's tokens
  x 768 x 3072, where most of the tower's compute is) and at 2048 x 2048 x 2048, for fp32 and bf16 (torch) and int8
  (torch ``_int_mm`` and ONNX Runtime ``MatMulInteger`` on uint8 activations and int8 weights, the operator its
  dynamic int8 tower runs), on every
  core torch and ONNX Runtime use by default. Best of ``--repeat``.
- Backends (``--backends``): model-only images/s over the shared photos, preprocessed beforehand (as
  ``bench_index.py --backends`` measures it), times the image tower's GFLOPs per image (counted by torch's
  FlopCounterMode, ``model_costs.py``), against the peak of the precision the backend computes in.

A backend can pass its precision's GEMM peak only where the GEMM test leaves speed on the table (a library's
kernels beat torch's), and no backend reaches it: attention, softmax, layer norms and GELU are not GEMMs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

PRECISION_OF = {
    "torch-fp32": "fp32",
    "onnx-fp32": "fp32",
    "torch-bf16": "bf16",
    "onnx-int8": "int8",
}


def precision_of(backend: str) -> str:
    """The precision a backend computes in here: OpenVINO runs bf16 where the CPU has it natively, else fp32."""
    from imgsearch.inference.backends import native_bf16

    if backend == "openvino":
        return "bf16" if native_bf16() else "fp32"
    return PRECISION_OF[backend]


def best_seconds(fn, repeat: int) -> float:
    fn()  # warm: kernels chosen, memory touched
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def torch_gemm(m: int, k: int, n: int, dtype: str, repeat: int) -> float:
    if dtype == "int8":
        a = torch.randint(-128, 127, (m, k), dtype=torch.int8)
        b = torch.randint(-128, 127, (k, n), dtype=torch.int8)
        seconds = best_seconds(lambda: torch._int_mm(a, b), repeat)
    else:
        kind = torch.float32 if dtype == "fp32" else torch.bfloat16
        a, b = torch.randn(m, k).to(kind), torch.randn(k, n).to(kind)
        seconds = best_seconds(lambda: a @ b, repeat)
    return 2 * m * k * n / seconds / 1e9


def onnx_gemm(m: int, k: int, n: int, dtype: str, repeat: int) -> float:
    """ONNX Runtime's MatMul (fp32) or MatMulInteger (uint8 x int8 -> int32), B a constant as in a model."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if dtype == "int8":
        b = rng.integers(-128, 127, (k, n), dtype=np.int8)
        a = rng.integers(0, 255, (m, k), dtype=np.uint8)  # activations uint8, weights int8: as quantize_dynamic
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        kinds = (TensorProto.UINT8, TensorProto.INT32)
    else:
        b = rng.standard_normal((k, n), dtype=np.float32)
        a = rng.standard_normal((m, k), dtype=np.float32)
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        kinds = (TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("A", kinds[0], [m, k])],
        [helper.make_tensor_value_info("Y", kinds[1], [m, n])],
        [numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString())
    seconds = best_seconds(lambda: session.run(None, {"A": a}), repeat)
    return 2 * m * k * n / seconds / 1e9


def peaks(batch: int, repeat: int) -> dict[str, float]:
    shapes = [(batch * 50, 768, 3072), (2048, 2048, 2048)]
    found: dict[str, float] = {}
    print(f"{'GEMM':34} {'GFLOP/s':>9}")
    from imgsearch.inference.backends import native_bf16

    for dtype in ("fp32", "bf16", "int8"):
        if dtype == "bf16" and not native_bf16():
            print("bf16: not native on this CPU (emulated, slower than fp32): not measured")
            continue
        for m, k, n in shapes:
            runs = [("torch", torch_gemm)] + ([("onnxruntime", onnx_gemm)] if dtype != "bf16" else [])
            for library, gemm in runs:
                rate = gemm(m, k, n, dtype, repeat)
                found[dtype] = max(found.get(dtype, 0.0), rate)
                print(f"{dtype} {library:12} {m}x{k}x{n:<10} {rate:9.0f}")
    print(
        "peak: "
        + ", ".join(f"{d} {r:.0f}" for d, r in found.items())
        + f" GFLOP/s on {torch.get_num_threads()} threads"
    )
    return found


def backend_fractions(args, found: dict[str, float]) -> None:
    from dataclasses import replace

    from bench_index import BACKENDS, fresh_collection
    from model_costs import image_gflops

    from imgsearch.config import ModelConfig
    from imgsearch.images import load_image

    gflops = image_gflops(args.model)
    model = ModelConfig(
        name=args.model, pretrained=None if args.pretrained == "none" else args.pretrained, device="cpu"
    )
    paths = sorted(str(p) for p in Path(args.images).glob("*.jpg"))[: args.count]
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"
        warm.mkdir()
        (warm / Path(paths[0]).name).write_bytes(Path(paths[0]).read_bytes())
        print(f"\n{args.model}: {gflops:.2f} GFLOPs per image; {len(paths)} photos, batch {args.batch_size}")
        print(f"{'backend':12} {'ran as':14} {'img/s':>7} {'GFLOP/s':>8} {'of peak':>8}")
        for name in args.backends:
            if precision_of(name) not in found:
                print(f"{name:12} skipped: its precision ({precision_of(name)}) is not native on this CPU")
                continue
            backend, precision = BACKENDS[name]
            engine = fresh_collection(
                Path(tmp) / name, replace(model, backend=backend, precision=precision), warm, args.batch_size
            )
            embedder = engine.embedder
            tensors = [embedder.preprocess(load_image(p, min_side=embedder.image_size).image) for p in paths]
            batches = [torch.stack(tensors[i : i + args.batch_size]) for i in range(0, len(tensors), args.batch_size)]
            seconds = best_seconds(lambda e=embedder, bs=batches: [e.encode_preprocessed(b) for b in bs], args.repeat)
            rate = len(paths) / seconds
            achieved = rate * gflops
            peak = found[precision_of(name)]
            print(f"{name:12} {embedder.backend:14} {rate:7.1f} {achieved:8.0f} {achieved / peak:8.0%}")
            engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared/data/coco_mini/val2017"))
    parser.add_argument("--count", type=int, default=128, help="photos per model-only pass")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--backends", nargs="*", default=["torch-fp32", "torch-bf16", "onnx-fp32", "openvino", "onnx-int8"]
    )
    args = parser.parse_args()
    found = peaks(args.batch_size, args.repeat)
    if args.backends:
        backend_fractions(args, found)


if __name__ == "__main__":
    main()
