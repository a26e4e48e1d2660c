"""Cost of the PixArt-δ ControlNet: one sampling step with a 13-block ControlNet vs without (dev-only).

Setting: the released width (1152, 16 heads x 72, T5 width 4096), α-1024-MS base of depth 28 with micro-conditions,
a 13-block ControlNet, random weights (PyTorch's default init; random projections, so the branch is not a no-op);
one model call on a CFG batch (batch 2 = [uncond; cond]) with a control latent of batch 1, 120 caption tokens
(rows with 30 and 24 valid); `torch.inference_mode()`, no torch.compile. The latent is 32x32 by default (256 px) to
keep CPU time sane; `--latent 128` is the 1024 px release size. Runs alternate with / without (and which goes
first) so machine-load noise hits both; medians after warm-up. "wall" is elapsed time, "cpu" the process CPU time.
Blocks of work give (28 + 13) / 28 = 1.46; counting the 14 projections (13 `after_proj` + `before_proj`, each a
1152x1152 product over every token, about 7% of a block) the arithmetic ratio is about 1.50 (`matmul_gflop`).
The target is <= 1.5x.

    python benchmarks/bench_controlnet.py [--runs 5] [--latent 32] [--dtype float32] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixart_core.controlnet.model import PixArtControlNet  # noqa: E402
from pixart_core.pixart.config import PRESETS  # noqa: E402
from pixart_core.pixart.model import PixArtTransformer  # noqa: E402

LOG = logging.getLogger("bench_controlnet")
BATCH, TOKENS, CONTROL_BLOCKS = 2, 120, 13
VALID = (30, 24)


def build(dtype: torch.dtype, device: str, seed: int = 0) -> tuple[PixArtTransformer, PixArtControlNet]:
    """The α-1024-MS base and a 13-block ControlNet for it, random weights."""
    torch.manual_seed(seed)
    model = PixArtTransformer(PRESETS["alpha-1024-ms"]).eval()
    net = PixArtControlNet.from_transformer(model, CONTROL_BLOCKS)
    with torch.no_grad():
        for module in (model, net):
            for name, param in module.named_parameters():
                if name.endswith("scale_shift_table") or "_proj." in name:
                    param.copy_(torch.randn_like(param) * param.shape[-1] ** -0.5)
    return model.to(device, dtype), net.to(device, dtype).eval()


def make_inputs(latent: int, device: str, dtype: torch.dtype, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 4, latent, latent, generator=gen)  # [2, 4, h, w]
    context = torch.randn(BATCH, TOKENS, 4096, generator=gen)  # [2, 120, 4096]
    mask = torch.zeros(BATCH, TOKENS)  # [2, 120]
    for row, length in enumerate(VALID):
        mask[row, :length] = 1
    control = torch.randn(1, 4, latent, latent, generator=gen)  # [1, 4, h, w]
    timestep = torch.tensor([500.0, 500.0])  # [2]
    return (x.to(device, dtype), timestep.to(device), context.to(device, dtype), mask.to(device),
            control.to(device, dtype))


def matmul_gflop(latent: int, control_blocks: int, depth: int = 28, hidden: int = 1152) -> float:
    """GFLOP of the products (GEMMs and attention) of one step, for `VALID` caption rows (cut to the longest)."""
    rows, tokens, caption = BATCH * (latent // 2) ** 2, (latent // 2) ** 2, max(VALID)
    square = 2 * rows * hidden * hidden  # one C x C projection over every token
    block = (3 + 1 + 1 + 1 + 8) * square  # qkv, proj, cross q, cross proj, MLP (4x up and down)
    block += 2 * BATCH * caption * hidden * 2 * hidden  # cross-attention k, v of the caption
    block += 4 * BATCH * tokens * (tokens + caption) * hidden  # self and cross attention: scores and values
    embed = 2 * BATCH * caption * (4096 + hidden) * hidden  # caption MLP 4096 -> C -> C
    plain = depth * block + embed
    return (plain + control_blocks * (block + square) + square) / 1e9 if control_blocks else plain / 1e9


def _synced(fn, device: str):
    def call():
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out
    return call


def time_pair(model, net, inputs, runs: int, warmup: int, device: str) -> dict[str, dict[str, list[float]]]:
    """Alternating timings {"plain"/"controlnet": {"wall": [s], "cpu": [s]}}."""
    x, timestep, context, mask, control = inputs
    calls = {"plain": _synced(lambda: model(x, timestep, context, mask), device),
             "controlnet": _synced(lambda: model(x, timestep, context, mask, controls=[(net, control, 1.0)]), device)}
    times = {name: {"wall": [], "cpu": []} for name in calls}
    order = list(calls)
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in calls.values():
                fn()
        for index in range(2 * runs):
            for name in order if index % 2 == 0 else order[::-1]:
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                calls[name]()
                times[name]["wall"].append(time.perf_counter() - start_wall)
                times[name]["cpu"].append(time.process_time() - start_cpu)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="pairs of alternating runs")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--latent", type=int, default=32, help="latent side (128 = 1024 px)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the GPU)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model, net = build(dtype, args.device)
    times = time_pair(model, net, make_inputs(args.latent, args.device, dtype), args.runs, args.warmup, args.device)

    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
              "dtype": args.dtype, "latent": args.latent, "batch": BATCH, "control_blocks": CONTROL_BLOCKS,
              "depth": model.config.depth, "times": times}
    LOG.info("torch %s, %d threads, %s %s, depth %d + %d control blocks, batch %d, latent %dx%d; medians of %d runs",
             torch.__version__, torch.get_num_threads(), args.device, args.dtype, model.config.depth,
             CONTROL_BLOCKS, BATCH, args.latent, args.latent, 2 * args.runs)
    arithmetic = matmul_gflop(args.latent, CONTROL_BLOCKS) / matmul_gflop(args.latent, 0)
    result["arithmetic_ratio"] = arithmetic
    for clock in ("wall", "cpu"):
        plain, control = (statistics.median(times[name][clock]) for name in ("plain", "controlnet"))
        result[f"plain_{clock}_s"], result[f"controlnet_{clock}_s"] = plain, control
        result[f"ratio_{clock}"] = control / plain
        LOG.info("%-4s  without %.3f s  with ControlNet %.3f s  ratio %.3f (arithmetic %.3f)", clock, plain,
                 control, control / plain, arithmetic)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
