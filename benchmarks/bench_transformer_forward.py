"""Forward-time benchmark: our PixArtTransformer vs diffusers' PixArtTransformer2DModel (dev-only).

Both models hold the same random weights (diffusers' state dict converted with `convert.diffusers_to_official`).
Setting: hidden 1152 (16 heads x 72), depth 2, 64x64 latent, batch 2, 120 caption tokens of width 4096,
α/Σ-1024 position embedding (sample_size 128, interpolation 2); caption masks "padded" (rows with 30 and 24
valid tokens) and "full" (all 120 valid); fp32 and bf16; `torch.inference_mode()`, no torch.compile.
Runs alternate ours / diffusers (and which goes first) so machine-load noise hits both; medians after warmup.
"wall" is elapsed time, "cpu" the process CPU time (all threads), which other jobs on the machine disturb less.
For low-precision dtypes, "err" is each model's max |output - fp32 diffusers output| on the same inputs.
`--baseline DIR` also times the PixArtTransformer of another checkout's `pixart_core` in DIR (e.g. from
`git archive HEAD pixart_core | tar -x -C DIR`) in the same rotation, so before/after ratios come from one run.

    python benchmarks/bench_transformer_forward.py [--runs 3] [--dtypes float32,bfloat16] [--masks padded,full]
        [--depth 2] [--threads N] [--baseline DIR] [--json results.json]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixart_core.pixart.convert import diffusers_to_official  # noqa: E402
from pixart_core.pixart.linear import compute_dtype  # noqa: E402

LOG = logging.getLogger("bench_transformer_forward")
HIDDEN, HEADS, CAPTION, TOKENS, BATCH, LATENT = 1152, 16, 4096, 120, 2, 64
MASKS = {"padded": (30, 24), "full": (TOKENS, TOKENS)}
NO_MICRO_CONDITIONS = {"resolution": None, "aspect_ratio": None}


def build_reference(depth: int, seed: int = 0):
    """fp32 diffusers model with random weights ~ N(0, 1/fan_in) everywhere (scale-shift tables included)."""
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
            param.copy_(torch.randn_like(param) * (param[0].numel() ** -0.5 if param.dim() > 1 else 0.1))
    return reference


def ours_like(reference, depth: int, dtype: torch.dtype, package: str = "pixart_core") -> torch.nn.Module:
    """Our transformer (from `package`, the checked-out one or a `load_baseline` copy) with reference's weights."""
    config_class = importlib.import_module(f"{package}.pixart.config").PixArtConfig
    model_class = importlib.import_module(f"{package}.pixart.model").PixArtTransformer
    config = config_class(hidden_size=HIDDEN, depth=depth, num_heads=HEADS, caption_channels=CAPTION,
                          sample_size=128, pe_interpolation=2.0)
    ours = model_class(config, dtype=dtype).eval()
    ours.load_state_dict(diffusers_to_official(reference.state_dict()), strict=True)
    return ours


def load_baseline(directory: Path) -> str:
    """Import DIR/pixart_core under the name `pixart_core_baseline`; returns that package name."""
    init = directory / "pixart_core" / "__init__.py"
    if not init.is_file():
        raise SystemExit(f"--baseline: {init} not found; extract a pixart_core tree into that folder first")
    name = "pixart_core_baseline"
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return name


def make_inputs(valid: tuple[int, int], seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, 4, LATENT, LATENT, generator=generator)  # [B, 4, 64, 64]
    context = torch.randn(BATCH, TOKENS, CAPTION, generator=generator)  # [B, 120, 4096]
    mask = torch.zeros(BATCH, TOKENS)  # [B, 120]
    for row, length in enumerate(valid):
        mask[row, :length] = 1
    timestep = torch.tensor([999, 500])  # [B]
    return x, timestep, context, mask


def run_reference(model, x, timestep, context, mask):
    return model(x, context, timestep, encoder_attention_mask=mask, added_cond_kwargs=NO_MICRO_CONDITIONS).sample


def _synced(fn, device: torch.device):
    def call():
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out
    return call


def time_rotation(calls: dict, runs: int, warmup: int) -> dict[str, dict]:
    """Timings {name: {"wall": [s], "cpu": [s]}} of 2 * runs rounds; each round starts one later in the order."""
    names = list(calls)
    times = {name: {"wall": [], "cpu": []} for name in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for name in names:
                calls[name]()
        for index in range(2 * runs):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                calls[name]()
                times[name]["wall"].append(time.perf_counter() - start_wall)
                times[name]["cpu"].append(time.process_time() - start_cpu)
    return times


def benchmark(depth: int, dtype_names: list[str], mask_names: list[str], runs: int, warmup: int,
              device: str = "cpu", baseline: str | None = None) -> list[dict]:
    reference32 = build_reference(depth).to(device)
    results = []
    for dtype_name in dtype_names:
        dtype = getattr(torch, dtype_name)
        reference = reference32 if dtype == torch.float32 else copy.deepcopy(reference32).to(dtype)
        ours = ours_like(reference32, depth, dtype).to(device)
        base = None if baseline is None else ours_like(reference32, depth, dtype, baseline).to(device)
        # fp32 evaluation of the same (rounded) weights: the accuracy yardstick for low-precision runs
        exact_model = reference32 if dtype == torch.float32 else copy.deepcopy(reference).float()
        for mask_name in mask_names:
            x, timestep, context, mask = make_inputs(MASKS[mask_name])
            inputs = (x.to(device, dtype), timestep.to(device), context.to(device, dtype), mask.to(device))
            with torch.inference_mode():
                ours_out, reference_out = ours(*inputs).float(), run_reference(reference, *inputs).float()
                exact = run_reference(exact_model, *(t.float() if t.is_floating_point() else t for t in inputs))
            row = {"dtype": dtype_name, "mask": mask_name, "valid_tokens": list(MASKS[mask_name]),
                   "max_abs_diff": (ours_out - reference_out).abs().max().item(),
                   "ours_err_vs_fp32": (ours_out - exact).abs().max().item(),
                   "diffusers_err_vs_fp32": (reference_out - exact).abs().max().item()}
            calls = {"ours": lambda: ours(*inputs), "diffusers": lambda: run_reference(reference, *inputs)}
            if base is not None:
                calls["baseline"] = lambda: base(*inputs)
            times = time_rotation({name: _synced(fn, inputs[0].device) for name, fn in calls.items()}, runs, warmup)
            for clock in ("wall", "cpu"):
                medians = {name: statistics.median(times[name][clock]) for name in times}
                row.update({f"ratio_{clock}": medians["ours"] / medians["diffusers"]})
                if base is not None:
                    row.update({f"baseline_ratio_{clock}": medians["baseline"] / medians["diffusers"]})
                for name in times:
                    row.update({f"{name}_{clock}_s": medians[name], f"{name}_{clock}_all_s": times[name][clock]})
            results.append(row)
        del reference, ours, base, exact_model
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="pairs of alternating runs per case")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--masks", default="padded,full")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timings synchronise the GPU)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="folder holding another checkout's pixart_core, timed in the same rotation")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    baseline = None if args.baseline is None else load_baseline(args.baseline)
    results = benchmark(args.depth, args.dtypes.split(","), args.masks.split(","), args.runs, args.warmup,
                        args.device, baseline)

    native_bf16 = compute_dtype(torch.empty(0, dtype=torch.bfloat16)) == torch.bfloat16
    LOG.info("torch %s, %d threads, depth %d, batch %d, latent %dx%d, %d tokens; medians of %d runs; "
             "CPU bf16 products: %s", torch.__version__, torch.get_num_threads(), args.depth, BATCH, LATENT, LATENT,
             TOKENS, 2 * args.runs, "native" if native_bf16 else "run in fp32 (no AVX512-BF16/AMX)")
    header = ("dtype", "mask", "ours wall", "diff wall", "ratio", "ours cpu", "diff cpu", "ratio",
              "|ours-diff|", "ours err", "diff err")
    LOG.info("%-9s %-7s %9s %9s %6s %9s %9s %6s %11s %9s %9s", *header)
    for row in results:
        LOG.info("%-9s %-7s %9.3f %9.3f %6.3f %9.3f %9.3f %6.3f %11.2e %9.2e %9.2e", row["dtype"], row["mask"],
                 row["ours_wall_s"], row["diffusers_wall_s"], row["ratio_wall"], row["ours_cpu_s"],
                 row["diffusers_cpu_s"], row["ratio_cpu"], row["max_abs_diff"], row["ours_err_vs_fp32"],
                 row["diffusers_err_vs_fp32"])
    if baseline is not None:
        LOG.info("baseline %s:", args.baseline)
        LOG.info("%-9s %-7s %9s %6s %9s %6s", "dtype", "mask", "base wall", "ratio", "base cpu", "ratio")
        for row in results:
            LOG.info("%-9s %-7s %9.3f %6.3f %9.3f %6.3f", row["dtype"], row["mask"], row["baseline_wall_s"],
                     row["baseline_ratio_wall"], row["baseline_cpu_s"], row["baseline_ratio_cpu"])
    if args.json:
        args.json.write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                         "depth": args.depth, "device": args.device, "native_bf16": native_bf16,
                                         "baseline": None if baseline is None else str(args.baseline),
                                         "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
