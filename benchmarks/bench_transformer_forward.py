"""Forward-time benchmark: our PixArtTransformer vs diffusers' PixArtTransformer2DModel (dev-only).

Both models hold the same random weights (diffusers' state dict converted with `convert.diffusers_to_official`).
Setting: hidden 1152 (16 heads x 72), depth 2, 64x64 latent, batch 2, 120 caption tokens of width 4096,
α/Σ-1024 position embedding (sample_size 128, interpolation 2); caption masks "padded" (rows with 30 and 24
valid tokens) and "full" (all 120 valid); fp32 and bf16; `torch.inference_mode()`, no torch.compile.
Runs alternate ours / diffusers so machine-load noise hits both; medians of N runs after warmup.

    python benchmarks/bench_transformer_forward.py [--runs 5] [--warmup 1] [--dtypes float32,bfloat16]
        [--depth 2] [--json results.json]
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

from pixart_core.pixart.config import PixArtConfig  # noqa: E402
from pixart_core.pixart.convert import diffusers_to_official  # noqa: E402
from pixart_core.pixart.model import PixArtTransformer  # noqa: E402

LOG = logging.getLogger("bench_transformer_forward")
HIDDEN, HEADS, CAPTION, TOKENS, BATCH, LATENT = 1152, 16, 4096, 120, 2, 64
MASKS = {"padded": (30, 24), "full": (TOKENS, TOKENS)}


def build_models(depth: int, dtype: torch.dtype, seed: int = 0):
    """(diffusers model, our model) with identical random weights in `dtype`."""
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    reference = PixArtTransformer2DModel(
        sample_size=128, num_layers=depth, patch_size=2, attention_head_dim=HIDDEN // HEADS,
        num_attention_heads=HEADS, caption_channels=CAPTION, in_channels=4, cross_attention_dim=HIDDEN,
        out_channels=8, attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False, interpolation_scale=2,
    ).eval()
    with torch.no_grad():
        for param in reference.parameters():
            scale = param[0].numel() ** -0.5 if param.dim() > 1 else 0.1
            param.copy_(torch.randn_like(param) * scale)
    reference = reference.to(dtype)
    config = PixArtConfig(hidden_size=HIDDEN, depth=depth, num_heads=HEADS, caption_channels=CAPTION,
                          sample_size=128, pe_interpolation=2.0)
    ours = PixArtTransformer(config, dtype=dtype).eval()
    ours.load_state_dict(diffusers_to_official(reference.state_dict()), strict=True)
    return reference, ours


def make_inputs(dtype: torch.dtype, valid: tuple[int, int], seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 4, LATENT, LATENT, generator=generator).to(dtype)  # [B, 4, 64, 64]
    context = torch.randn(BATCH, TOKENS, CAPTION, generator=generator).to(dtype)  # [B, 120, 4096]
    mask = torch.zeros(BATCH, TOKENS)  # [B, 120]
    for row, length in enumerate(valid):
        mask[row, :length] = 1
    timestep = torch.tensor([999, 500])  # [B]
    return x, timestep, context, mask


def time_pair(reference, ours, inputs, runs: int, warmup: int) -> tuple[dict, dict, float]:
    """Alternating timings {"wall": [s], "cpu": [s]} for ours and diffusers, and the max |ours - diffusers|.

    "cpu" is the process CPU time (all threads): less sensitive than wall time to other jobs on the machine."""
    x, timestep, context, mask = inputs

    def run_reference():
        return reference(x, context, timestep, encoder_attention_mask=mask,
                         added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample

    def run_ours():
        return ours(x, timestep, context, mask)

    ours_times, reference_times = {"wall": [], "cpu": []}, {"wall": [], "cpu": []}
    with torch.inference_mode():
        diff = (run_ours().float() - run_reference().float()).abs().max().item()
        for _ in range(max(warmup - 1, 0)):
            run_ours(), run_reference()
        for index in range(2 * runs):  # alternate which model goes first
            order = ((run_ours, ours_times), (run_reference, reference_times))
            for fn, times in order if index % 2 == 0 else order[::-1]:
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                fn()
                times["wall"].append(time.perf_counter() - start_wall)
                times["cpu"].append(time.process_time() - start_cpu)
    return ours_times, reference_times, diff


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="pairs of alternating runs per model")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--masks", default="padded,full")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    results = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        reference, ours = build_models(args.depth, dtype)
        for mask_name in args.masks.split(","):
            ours_times, reference_times, diff = time_pair(
                reference, ours, make_inputs(dtype, MASKS[mask_name]), args.runs, args.warmup)
            row = {"dtype": dtype_name, "mask": mask_name, "valid_tokens": list(MASKS[mask_name]), "max_abs_diff": diff}
            for clock in ("wall", "cpu"):
                ours_median = statistics.median(ours_times[clock])
                reference_median = statistics.median(reference_times[clock])
                row.update({f"ours_{clock}_s": ours_median, f"diffusers_{clock}_s": reference_median,
                            f"ratio_{clock}": ours_median / reference_median,
                            f"ours_{clock}_all_s": ours_times[clock], f"diffusers_{clock}_all_s": reference_times[clock]})
            results.append(row)
        del reference, ours

    LOG.info("torch %s, %d threads, depth %d, batch %d, latent %dx%d, %d tokens, runs %d",
             torch.__version__, torch.get_num_threads(), args.depth, BATCH, LATENT, LATENT, TOKENS, args.runs)
    LOG.info("medians of %d runs each (wall = elapsed, cpu = process CPU time)", 2 * args.runs)
    LOG.info("%-9s %-7s %9s %9s %10s %9s %9s %9s %10s %9s", "dtype", "mask", "ours wall", "diff wall",
             "ratio wall", "ours cpu", "diff cpu", "ratio cpu", "max|diff|", "")
    for row in results:
        LOG.info("%-9s %-7s %9.3f %9.3f %10.3f %9.3f %9.3f %9.3f %10.2e", row["dtype"], row["mask"],
                 row["ours_wall_s"], row["diffusers_wall_s"], row["ratio_wall"], row["ours_cpu_s"],
                 row["diffusers_cpu_s"], row["ratio_cpu"], row["max_abs_diff"])
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "depth": args.depth, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
