"""Forward time of each registered architecture on one patch, fp32 and bf16 autocast + channels_last_3d.

Prints one JSON line per architecture: ``arch``, ``params``, ``arch_kwargs``, ``shape``, ``threads``,
``gflop`` (convolution FLOPs of one forward, counted by ``torch.utils.flop_counter``: load-independent),
``fp32_s`` and ``bf16_cl_s`` (median wall seconds per forward, batch 1, no grad), the same as process
CPU seconds summed over threads (``*_cpu_s``, steadier on a shared machine), ``speedup`` (fp32/bf16
wall), ``ratio_to_unet`` (fp32 CPU time over MONAI UNet's in the same run), ``load_avg_1min``, and
with ``--backward`` one bf16 forward+backward step (``train_step_s``, ``train_step_cpu_s``).

    nice -n 10 .venv/bin/python benchmarks/networks.py --threads 2 --shape 16 160 160
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from deconvseg.models.registry import build_model

# Small, fast ACDC members (4 classes; slices ~10 mm, in-plane ~1.5 mm; patch 16x160x160).
ANISO_POOL = [[1, 2, 2], [1, 2, 2], [2, 2, 2]]
ANISO_KERNEL = [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]]
SUGGESTED = {
    "deconvnet3d": dict(in_channels=1, out_channels=4, widths=[16, 32, 64, 128], pool_sizes=ANISO_POOL,
                        kernel_sizes=ANISO_KERNEL, norm="instance", skip="concat"),
    "deconvnet3d-small": dict(in_channels=1, out_channels=4, widths=[8, 16, 32, 64], pool_sizes=ANISO_POOL,
                              kernel_sizes=ANISO_KERNEL, norm="instance", skip="concat"),
    "deconvnet3d-none": dict(in_channels=1, out_channels=4, widths=[16, 32, 64, 128], pool_sizes=ANISO_POOL,
                             kernel_sizes=ANISO_KERNEL, norm="instance", skip="none"),
    "fcn3d": dict(in_channels=1, out_channels=4, widths=[16, 32, 64, 128], pool_sizes=ANISO_POOL,
                  kernel_sizes=ANISO_KERNEL, norm="instance", fuse_channels=32),
    "two_scale": dict(in_channels=1, out_channels=4, context_factor=[1, 3, 3], widths=[16, 32, 64],
                      context_widths=[8, 16, 32], pool_sizes=ANISO_POOL[:2], kernel_sizes=ANISO_KERNEL[:3]),
    "unet": dict(in_channels=1, out_channels=4, channels=[16, 32, 64, 128], strides=ANISO_POOL,
                 num_res_units=1, norm="instance"),
    "dynunet": dict(in_channels=1, out_channels=4, kernel_size=ANISO_KERNEL, strides=[[1, 1, 1], *ANISO_POOL],
                    filters=[16, 32, 64, 128], norm_name="instance"),
}


def _median_time(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds (all threads) of ``fn``."""
    fn()  # warm-up (oneDNN primitive creation)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def measure(name: str, shape: list[int], repeats: int, backward: bool) -> dict:
    """Timings of one suggested configuration (see the module docstring)."""
    kwargs = SUGGESTED[name]
    arch = name.split("-")[0]
    torch.manual_seed(0)
    model = build_model(arch, **kwargs).eval()
    x = torch.randn(1, 1, *shape)
    inputs = (x, x) if arch == "two_scale" else (x,)

    def forward(m=model, inp=inputs):
        with torch.no_grad():
            m(*inp)

    with FlopCounterMode(display=False) as counter:
        forward()
    fp32, fp32_cpu = _median_time(forward, repeats)
    model_cl = model.to(memory_format=torch.channels_last_3d)
    inputs_cl = tuple(t.to(memory_format=torch.channels_last_3d) for t in inputs)

    def forward_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forward(model_cl, inputs_cl)

    bf16, bf16_cpu = _median_time(forward_bf16, repeats)
    row = {"arch": name, "params": sum(p.numel() for p in model.parameters()), "shape": shape,
           "gflop": round(counter.get_total_flops() / 1e9, 1),
           "threads": torch.get_num_threads(), "fp32_s": round(fp32, 3), "bf16_cl_s": round(bf16, 3),
           "fp32_cpu_s": round(fp32_cpu, 3),
           "bf16_cl_cpu_s": round(bf16_cpu, 3), "speedup": round(fp32 / bf16, 2), "arch_kwargs": kwargs}
    if backward:
        model_cl.train()
        target = torch.zeros(1, *shape, dtype=torch.long)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model_cl(*inputs_cl).float(), target)
            loss.backward()

        row["train_step_s"], row["train_step_cpu_s"] = (round(t, 3) for t in _median_time(step, max(1, repeats // 2)))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 160, 160], metavar=("Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--arch", nargs="*", default=list(SUGGESTED), choices=list(SUGGESTED))
    parser.add_argument("--backward", action="store_true", help="also time a bf16 forward+backward step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.arch if "unet" in args.arch else [*args.arch, "unet"]  # the peer for the ratio
    rows = {name: measure(name, args.shape, args.repeats, args.backward) for name in names}
    for name in args.arch:
        rows[name]["ratio_to_unet"] = round(rows[name]["fp32_cpu_s"] / rows["unet"]["fp32_cpu_s"], 2)
        rows[name]["load_avg_1min"] = round(os.getloadavg()[0], 1)
        print(json.dumps(rows[name]), flush=True)


if __name__ == "__main__":
    main()
