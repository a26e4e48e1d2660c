"""Costs of layered generation (issue #10 item 9), on a tiny random pipeline in one run (dev-only).

1. Budget: the sum over DiT calls of batch x image tokens of `generate_layers` with N = 2, 4, 8 foreground
   layers, as a ratio to one plain image of the same size, steps and CFG (limit 1 + 0.5 N), counted.
2. Seconds: a 4-layer poster at --size² against one plain image at --size² (same steps and CFG), wall and process
   CPU time, and their ratio.
3. Peak memory: the process' peak resident set (ru_maxrss) after the plain image and after the poster.

    python benchmarks/bench_layers.py [--size 1024] [--budget-size 256] [--steps 20] [--threads 2]
                                      [--model PIPELINE_DIR] [--tokenizer T5_TOKENIZER_DIR]
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixart_core.layers.budget import TokenCounter, budget_limit  # noqa: E402
from pixart_core.pipeline import PixArtPipeline  # noqa: E402

BOXES = [(0.0, 0.0, 0.6, 0.6), (0.4, 0.25, 1.0, 0.9), (0.1, 0.5, 0.7, 1.0), (0.5, 0.0, 1.0, 0.5),
         (0.2, 0.2, 0.55, 0.55), (0.6, 0.6, 1.0, 1.0), (0.0, 0.75, 0.4, 1.0), (0.3, 0.05, 0.95, 0.45)]
CFG = 4.5


def layout(count: int, size: int) -> dict:
    """A square poster layout of `count` overlapping boxes (fractions of BOXES, snapped to 16 px)."""
    snap = lambda v: int(round(v * size / 16)) * 16  # noqa: E731
    return {"width": size, "height": size, "prompt": "a poster of a forest festival", "negative": "blurry",
            "background": {"prompt": "a forest clearing at dusk"},
            "layers": [{"name": f"subject {i}", "prompt": f"a lantern number {i}", "box": [snap(v) for v in box]}
                       for i, box in enumerate(BOXES[:count])]}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def load(args) -> PixArtPipeline:
    if args.model:
        return PixArtPipeline.from_pretrained(args.model)
    from pixart_core.testing.suite import write_tiny_suite

    with tempfile.TemporaryDirectory(prefix="bench_layers_") as tmp:  # the weights are in memory once loaded
        write_tiny_suite(Path(tmp), tokenizer_dir=Path(args.tokenizer))
        return PixArtPipeline.from_pretrained(Path(tmp) / "pipelines" / "sigma-256")


def plain(pipe, size: int, steps: int):
    return pipe("a poster of a forest festival", negative_prompt="blurry", height=size, width=size,
                num_inference_steps=steps, guidance_scale=CFG, use_resolution_binning=False, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--budget-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", help="a pipeline folder (default: make-tiny's sigma-256 pipeline)")
    parser.add_argument("--tokenizer", default=str(ROOT.parent / "shared" / "testdata" / "t5_tokenizer"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    pipe = load(args)

    for count in (2, 4, 8):
        with TokenCounter(pipe.transformer) as base:
            plain(pipe, args.budget_size, args.steps)
        with TokenCounter(pipe.transformer) as layered:
            pipe.generate_layers(layout(count, args.budget_size), seed=0, num_inference_steps=args.steps,
                                 guidance_scale=CFG)
        ratio = layered.tokens / base.tokens
        print(f"budget N={count}: {ratio:.3f}x one image (limit {budget_limit(count):.1f}x; "  # noqa: T201
              f"{layered.calls} DiT calls vs {base.calls}) at {args.budget_size}², {args.steps} steps, cfg {CFG}")

    plain(pipe, 64, 2)  # warm-up
    pipe.generate_layers(layout(4, 64), seed=0, num_inference_steps=2)
    (image_s, image_cpu) = timed(lambda: plain(pipe, args.size, args.steps))
    image_peak = peak_mb()
    (poster_s, poster_cpu) = timed(lambda: pipe.generate_layers(layout(4, args.size), seed=0,
                                                                num_inference_steps=args.steps, guidance_scale=CFG))
    poster_peak = peak_mb()
    print(f"seconds at {args.size}², {args.steps} steps, {args.threads} threads: "  # noqa: T201
          f"one image {image_s:.1f} s (cpu {image_cpu:.1f}), 4-layer poster {poster_s:.1f} s (cpu {poster_cpu:.1f}), "
          f"ratio {poster_s / image_s:.2f}x")
    print(f"peak RSS: {image_peak:.0f} MB after the image, {poster_peak:.0f} MB after the poster")  # noqa: T201


if __name__ == "__main__":
    main()
