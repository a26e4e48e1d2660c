"""End-to-end seconds per image: PixArtPipeline vs diffusers' PixArtSigmaPipeline, same folder, one run.

The model is tiny but wide: the DiT has the released width (1152, 16 heads x 72, T5 width 4096) at depth 2,
T5 has width 4096 with one layer, the VAE is the tiny 4-level one (so the DiT dominates). Both pipelines load
the same diffusers folder, get the same initial latents and run DPM-Solver++ 2M with CFG.

    python benchmarks/bench_pipeline.py [--size 512] [--steps 10] [--repeats 3] [--dtype fp32|bf16] [--json PATH]
                                        [--tokenizer DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixart_core.testing.files import write_json  # noqa: E402
from pixart_core.pipeline import PixArtPipeline  # noqa: E402
from pixart_core.pixart.config import PRESETS  # noqa: E402
from pixart_core.t5.config import T5Config  # noqa: E402
from pixart_core.testing.suite import SCHEDULER_CONFIGS  # noqa: E402
from pixart_core.testing.t5 import copy_tokenizer, tiny_t5_state_dict, write_hf_folder  # noqa: E402
from pixart_core.testing.transformers import random_official_state_dict, write_diffusers_folder  # noqa: E402
from pixart_core.testing.vae import write_tiny_vaes  # noqa: E402

# the T5 v1.1 tokenizer of a development checkout (../shared/testdata beside the repository)
DEFAULT_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "t5_tokenizer"

log = logging.getLogger("bench_pipeline")


def build(folder: Path, tokenizer: Path) -> Path:
    cfg = PRESETS["sigma-512"].with_(depth=2)
    write_diffusers_folder(random_official_state_dict(cfg, seed=0, pos_embed=False), cfg, folder / "transformer")
    t5 = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=1024, num_layers=1, num_heads=64,
                  relative_attention_num_buckets=32, relative_attention_max_distance=128)
    write_hf_folder(folder / "text_encoder", t5, tiny_t5_state_dict(t5, seed=0))
    copy_tokenizer(tokenizer, folder / "tokenizer")
    vaes = write_tiny_vaes(folder / "_vaes")
    vaes["sdxl_diffusers"].rename(folder / "vae")
    write_json({"_class_name": "DPMSolverMultistepScheduler", **SCHEDULER_CONFIGS["DPMSolverMultistepScheduler"]},
               folder / "scheduler" / "scheduler_config.json")
    write_json({"_class_name": "PixArtSigmaPipeline", "_diffusers_version": "0.30.0",
                "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
                "text_encoder": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "T5Tokenizer"],
                "transformer": ["diffusers", "PixArtTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]},
               folder / "model_index.json")
    return folder


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                        help="T5 v1.1 tokenizer folder (tokenizer.json); default: %(default)s")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not (args.tokenizer / "tokenizer.json").is_file():
        sys.exit(f"--tokenizer {args.tokenizer}: no tokenizer.json there; pass a T5 v1.1 tokenizer folder")
    import diffusers

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    with tempfile.TemporaryDirectory() as tmp:
        folder = build(Path(tmp) / "pipe", args.tokenizer)
        ours = PixArtPipeline.from_pretrained(folder, dtype=dtype)
        ref = diffusers.PixArtSigmaPipeline.from_pretrained(folder, torch_dtype=dtype)
        ref.set_progress_bar_config(disable=True)
        latents = torch.randn(1, 4, args.size // 8, args.size // 8, generator=torch.Generator().manual_seed(0))
        common = dict(height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=4.5,
                      use_resolution_binning=False, output_type="pt")
        prompt = "a lighthouse on a cliff at dusk, oil painting"
        with torch.inference_mode():
            t_ours = timed(lambda: ours(prompt, latents=latents.to(dtype), **common), args.repeats)
            t_ref = timed(lambda: ref(prompt, latents=latents.to(dtype), clean_caption=False, **common).images,
                          args.repeats)
            diff = (ours(prompt, latents=latents.to(dtype), **common).float()
                    - ref(prompt, latents=latents.to(dtype), clean_caption=False, **common).images.float()).abs().max()
    result = {"size": args.size, "steps": args.steps, "dtype": args.dtype, "threads": torch.get_num_threads(),
              "ours_s": statistics.median(t_ours), "diffusers_s": statistics.median(t_ref),
              "ratio": statistics.median(t_ours) / statistics.median(t_ref), "max_abs_diff": float(diff)}
    print(f"{args.size}x{args.size}, {args.steps} steps, {args.dtype}, {result['threads']} threads: "  # noqa: T201
          f"ours {result['ours_s']:.2f} s/image, diffusers {result['diffusers_s']:.2f} s/image, "
          f"ratio {result['ratio']:.2f}, image max abs diff {result['max_abs_diff']:.1e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
