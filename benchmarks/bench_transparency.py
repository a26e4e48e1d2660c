"""Costs of transparency (issue #9 targets), each a ratio or a time on this machine in one run (dev-only).

1. LayerDiffuse transparent decode with TTA (8 dihedral passes of the released-size UNet1024, random fp32
   weights) against one plain SDXL-size VAE decode of the same latent (random weights). Target <= 8x.
2. Attention capture on one sampling step: a PixArt-Σ-width DiT (1152 = 16 heads x 72, depth --depth), CFG batch
   2, 300 caption tokens (30 and 24 valid), with `capture_attention()` over all blocks vs without. Target <= 1.10x.
3. The matte at --size² on a procedural subject (pixart_core.testing.rgba_scenes). Target <= 3 s at 1024².

Runs alternate (with / without) and report medians after a warm-up; "cpu" is process CPU time.

    python benchmarks/bench_transparency.py [--size 1024] [--runs 3] [--depth 4] [--threads 2] [--skip decode]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixart_core.pixart.config import PRESETS  # noqa: E402
from pixart_core.pixart.model import PixArtTransformer  # noqa: E402
from pixart_core.rgba.matte import matte  # noqa: E402
from pixart_core.rgba.transparent_decoder import TransparentDecoder  # noqa: E402
from pixart_core.rgba.transparent_unet import TransparentUNet, TransparentUNetConfig  # noqa: E402
from pixart_core.testing.rgba_scenes import make_scene  # noqa: E402
from pixart_core.vae.config import VAEConfig  # noqa: E402
from pixart_core.vae.model import AutoencoderKL  # noqa: E402


def timed(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(first, second, runs: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Median (wall, cpu) of each callable, alternating which runs first, after one warm-up of each."""
    first(), second()
    a, b = [], []
    for index in range(runs):
        order = [(first, a), (second, b)] if index % 2 == 0 else [(second, b), (first, a)]
        for fn, out in order:
            out.append(timed(fn))
    med = lambda xs: (statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs))  # noqa: E731
    return med(a), med(b)


@torch.inference_mode()
def bench_decode(size: int, runs: int) -> str:
    vae = AutoencoderKL(VAEConfig(scaling_factor=0.13025, force_upcast=False)).eval()
    decoder = TransparentDecoder(TransparentUNet(TransparentUNetConfig()).eval(), family="sdxl", latent_space="sdxl")
    latent = torch.randn(1, 4, size // 8, size // 8)  # [1, 4, h, w] unscaled
    image = torch.rand(1, 3, size, size)  # [1, 3, H, W] in 0..1
    (plain, plain_cpu), (tta, tta_cpu) = alternate(lambda: vae.decode(latent, tile=False),
                                                   lambda: decoder.estimate(image, latent, tta=True), runs)
    return (f"| transparent decode, TTA, {size}² | {tta:.2f} s | plain VAE decode {plain:.2f} s | "
            f"{tta / plain:.2f}x (cpu {tta_cpu / plain_cpu:.2f}x) | <= 8x |")


@torch.inference_mode()
def bench_capture(size: int, runs: int, depth: int) -> str:
    torch.manual_seed(0)
    model = PixArtTransformer(PRESETS["sigma-1024"].with_(depth=depth)).eval()
    latent = torch.randn(2, 4, size // 8, size // 8)  # [2, 4, h, w]
    context = torch.randn(2, 300, 4096)  # [2, L, C]
    mask = torch.zeros(2, 300)
    mask[0, :30], mask[1, :24] = 1, 1

    def plain():
        model(latent, torch.tensor([500.0, 500.0]), context, mask)

    def captured():
        with model.capture_attention() as capture:
            model(latent, torch.tensor([500.0, 500.0]), context, mask)
        capture.cross_attention()

    (base, base_cpu), (cap, cap_cpu) = alternate(plain, captured, runs)
    return (f"| attention capture, one step, {size}², depth {depth} | {cap:.2f} s | without {base:.2f} s | "
            f"{cap / base:.3f}x (cpu {cap_cpu / base_cpu:.3f}x) | <= 1.10x |")


def bench_matte(size: int, runs: int) -> str:
    scene = make_scene("hair", "gradient", size=size, seed=0)
    image, hint = scene.image[None], scene.hint[None]  # [1, 3, H, W], [1, 1, h, w]
    matte(image, hint)  # warm-up (numba kernels load)
    times = [timed(lambda: matte(image, hint)) for _ in range(runs)]
    wall, cpu = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
    return f"| matte, hairy subject on a gradient, {size}² | {wall:.2f} s | cpu {cpu:.2f} s | | <= 3 s |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", action="append", default=[], choices=["decode", "capture", "matte"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| what | time | against | ratio | target |\n|---|---|---|---|---|")
    if "decode" not in args.skip:
        print(bench_decode(args.size, args.runs), flush=True)
    if "capture" not in args.skip:
        print(bench_capture(args.size, args.runs, args.depth), flush=True)
    if "matte" not in args.skip:
        print(bench_matte(args.size, args.runs), flush=True)


if __name__ == "__main__":
    main()
