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


def time_pair(reference, ours, inputs, runs: int, warmup: int) -> tuple[list[float], list[float], float]:
    """Alternating timings (seconds) and the max |ours - diffusers| of the outputs."""
    x, timestep, context, mask = inputs

    def run_reference():
        return reference(x, context, timestep, encoder_attention_mask=mask,
                         added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample

    def run_ours():
        return ours(x, timestep, context, mask)

    ours_times, reference_times = [], []
    with torch.inference_mode():
        diff = (run_ours().float() - run_reference().float()).abs().max().item()
        for _ in range(max(warmup - 1, 0)):
            run_ours(), run_reference()
        for _ in range(runs):
            for fn, times in ((run_ours, ours_times), (run_reference, reference_times)):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
    return ours_times, reference_times, diff


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
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
            ours_median, reference_median = statistics.median(ours_times), statistics.median(reference_times)
            results.append({
                "dtype": dtype_name, "mask": mask_name, "valid_tokens": list(MASKS[mask_name]),
                "ours_s": ours_median, "diffusers_s": reference_median, "ratio": ours_median / reference_median,
                "ours_all_s": ours_times, "diffusers_all_s": reference_times, "max_abs_diff": diff,
            })
        del reference, ours

    LOG.info("torch %s, %d threads, depth %d, batch %d, latent %dx%d, %d tokens, runs %d",
             torch.__version__, torch.get_num_threads(), args.depth, BATCH, LATENT, LATENT, TOKENS, args.runs)
    LOG.info("%-9s %-7s %10s %13s %7s %12s", "dtype", "mask", "ours [s]", "diffusers [s]", "ratio", "max|diff|")
    for row in results:
        LOG.info("%-9s %-7s %10.3f %13.3f %7.3f %12.2e", row["dtype"], row["mask"], row["ours_s"],
                 row["diffusers_s"], row["ratio"], row["max_abs_diff"])
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "depth": args.depth, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
