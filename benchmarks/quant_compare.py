"""edgeseq ``w8a8`` vs ONNX Runtime ``quantize_static`` vs Brevitas default PTQ, side by side.

    python benchmarks/quant_compare.py MODEL [--calib stdlib] [--data shakespeare]
        [--window 256] [--windows 64] [--calib-samples 32] [--threads 2]

One language model, one calibration set, one evaluation set, scored the same way for every
method: bits per byte of next-token prediction inside independent windows of ``--window`` tokens
(the parallel forward graph on ``[B, window]``; every method sees exactly the same windows).

* ``fp32`` — the float model (PyTorch);
* ``edgeseq w8a8`` / ``edgeseq w8a8-minmax`` — ``quantize.apply.quantize_model``;
* ``onnxruntime quantize_static`` — the float model exported to ONNX (opset 17), quantized by
  ONNX Runtime's static quantizer with its defaults (QDQ format, int8 activations and weights,
  per-channel weights, MinMax calibration) on the same calibration windows, run in ONNX Runtime;
* ``brevitas layerwise PTQ`` — ``brevitas.graph.quantize.layerwise_quantize`` (its default int8
  layer map: per-tensor weights, per-tensor static activations at every ``nn.Linear`` input),
  calibrated with ``brevitas.graph.calibrate.calibration_mode`` on the same windows.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def windows_of(ids: torch.Tensor, window: int, count: int, seed: int) -> torch.Tensor:
    from edgeseq.corpus import random_windows

    return random_windows(ids, count, window - 1, torch.Generator().manual_seed(seed))  # [count, window]


def bits_per_byte(logits_fn, windows: torch.Tensor, batch: int = 8) -> float:
    """Mean next-token loss in bits over all windows (byte tokenizer: bits per byte)."""
    nats, count = 0.0, 0
    for chunk in windows.split(batch):
        logits = torch.as_tensor(logits_fn(chunk[:, :-1])).float()  # [b, W-1, V]
        nats += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"))
        count += chunk[:, 1:].numel()
    return nats / count / math.log(2)


def torch_fn(model):
    def run(x):
        with torch.no_grad():
            return model(x)

    return run


def onnxruntime_static(model, calib: list[torch.Tensor], window: int, workdir: Path):
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    float_path, quant_path = workdir / "float.onnx", workdir / "int8.onnx"
    example = calib[0][:1, : window - 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(float_path), input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input_ids": b[:, : window - 1].numpy()} for b in calib])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(float_path), str(quant_path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(quant_path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input_ids": x.numpy()})[0]


def brevitas_layerwise(model, calib: list[torch.Tensor], window: int):
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.graph.quantize import layerwise_quantize

    qmodel = layerwise_quantize(copy.deepcopy(model))
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        for batch in calib:
            qmodel(batch[:, : window - 1])
    return torch_fn(qmodel)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--calib", default="stdlib")
    parser.add_argument("--data", default="shakespeare")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--windows", type=int, default=64, help="evaluation windows")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="fp32,edgeseq-w8a8,edgeseq-w8a8-minmax,onnxruntime,brevitas")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from edgeseq.checkpoints import load_model
    from edgeseq.corpus import encode_text, load_split
    from quantize.apply import quantize_model
    from quantize.calibrate import calibration_batches

    loaded = load_model(args.model)
    model = loaded.model.eval()
    calib, _ = calibration_batches(model, args.calib, tokenizer=loaded.tokenizer, samples=args.calib_samples,
                                   seq_len=args.window, batch_size=8, split="train")
    eval_ids = encode_text(loaded.tokenizer, load_split(args.data, "validation").text)
    windows = windows_of(eval_ids, args.window, args.windows, seed=1)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in [m for m in args.methods.split(",") if m]:
            start = time.perf_counter()
            if method == "fp32":
                fn = torch_fn(model)
            elif method.startswith("edgeseq-"):
                qmodel, _ = quantize_model(model, method.removeprefix("edgeseq-"), [b[:, : args.window - 1] for b in calib],
                                           progress=False)
                fn = torch_fn(qmodel)
            elif method == "onnxruntime":
                fn = onnxruntime_static(model, calib, args.window, Path(tmp))
            elif method == "brevitas":
                fn = brevitas_layerwise(model, calib, args.window)
            else:
                raise SystemExit(f"unknown method {method}")
            prepare = time.perf_counter() - start
            start = time.perf_counter()
            score = bits_per_byte(fn, windows)
            rows.append((method, score, prepare, time.perf_counter() - start))
            print(f"{method}: {score:.4f} bits/byte", file=sys.stderr, flush=True)

    base = rows[0][1] if rows and rows[0][0] == "fp32" else None
    print(f"\n{args.model}: {args.windows} windows × {args.window} tokens of {args.data}; "
          f"calibration {args.calib_samples} windows of {args.calib}; {args.threads} threads")
    print("| method | bits/byte | Δ vs fp32 | prepare s | eval s |")
    print("|---|---|---|---|---|")
    for method, score, prepare, seconds in rows:
        delta = f"{100 * (score - base) / base:+.2f}%" if base else ""
        print(f"| {method} | {score:.4f} | {delta} | {prepare:.1f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
