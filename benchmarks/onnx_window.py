"""ONNX Runtime against torch on one real-size window: seconds per window and agreement of the outputs.

    .venv/bin/pip install onnxruntime onnx onnxscript     # optional: not a dependency of deconvseg
    .venv/bin/python benchmarks/onnx_window.py [--threads 2] [--repeats 3]

One DeconvNet3d of ``ct_scale.py --preset real`` (widths 16-32-64-128, concat skips, switch
unpooling) on a 96^3 window of random input, exported with ``torch.onnx.export`` (opset 18). Prints one
JSON line: the median seconds per window of torch fp32, torch bf16 autocast (channels-last, as
``segment_case`` runs it) and ONNX Runtime fp32 (CPU provider, all graph optimisations), and the largest
absolute difference of the softmax probabilities from torch fp32 (the issue's bar: 1e-3).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _median_s(call, repeats: int) -> float:
    call()  # warm-up (first-call buffers, oneDNN primitive creation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    try:
        import onnxruntime as ort
    except ImportError:
        raise SystemExit("onnxruntime is not installed: .venv/bin/pip install onnxruntime onnx onnxscript") from None
    import torch

    from deconvseg.models.registry import build_model
    from deconvseg.pipeline.inference import prepare_predictor

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_model("deconvnet3d", in_channels=1, out_channels=5, widths=[16, 32, 64, 128], skip="concat").eval()
    x = torch.randn(1, 1, 96, 96, 96)
    fp32 = prepare_predictor(net)
    reference = torch.softmax(fp32(x), dim=1)
    result: dict = {"window": [96, 96, 96], "widths": [16, 32, 64, 128], "threads": args.threads}
    result["torch_fp32_s"] = _median_s(lambda: fp32(x), args.repeats)
    bf16 = prepare_predictor(net, bf16=True, channels_last=True)
    result["torch_bf16_s"] = _median_s(lambda: bf16(x), args.repeats)
    result["torch_bf16_max_abs_diff"] = float((torch.softmax(bf16(x), dim=1) - reference).abs().max())
    net = net.to(memory_format=torch.contiguous_format)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "member.onnx"
        try:
            torch.onnx.export(net, (x,), str(path), opset_version=18, dynamo=True)
        except Exception as error:  # noqa: BLE001 -- the exporter's failure is the result
            result["onnx_export_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            print(json.dumps(result))
            return
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        result["onnxruntime_fp32_s"] = _median_s(lambda: session.run(None, feed), args.repeats)
        out = torch.from_numpy(session.run(None, feed)[0])
        result["onnxruntime_max_abs_diff"] = float((torch.softmax(out, dim=1) - reference).abs().max())
    result = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
