"""Quality and speed of the training-free matte (`pixart_core.rgba.matte`) on the procedural RGBA scenes.

Quality: every subject (blob, hair, ring, glass) over every background (plain, white, gradient, noisy) at
`--size` px (512 by default), seeded; the background is estimated from the border (`--given` passes the flat
colour where there is one). Ours is compared with the hint (the true alpha area-downsampled to 1/16, blurred,
noised) bilinearly upsampled and thresholded at 0.5. Errors are alphamatting.com's (Rhemann et al., CVPR 2009,
as in Xu et al.'s evaluation code, arXiv 1703.03872) over the whole image: SAD /1000, MSE, Grad /1000 (Gaussian
derivative sigma 1.4), Conn /1000 (step 0.1, theta 0.15).

Speed: one 1024 x 1024 image per subject (gradient background), medians over `--runs` after one warm-up call;
"wall" is elapsed time, "cpu" the process CPU time (the machine may be shared). pymatting's import (its numba
kernels loaded from the cache) is timed separately, as it is paid once per process.

    python benchmarks/bench_matte.py [--size 512] [--timing-size 1024] [--runs 3] [--threads N] [--json out.json]
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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixart_core.rgba import matting_metrics  # noqa: E402
from pixart_core.rgba.matte import matte  # noqa: E402
from pixart_core.testing.rgba_scenes import SUBJECTS, make_scene, scene_set  # noqa: E402

LOG = logging.getLogger("bench_matte")
OPAQUE_SUBJECTS = ("blob", "hair", "ring")


def thresholded_hint(scene) -> torch.Tensor:
    hint = F.interpolate(scene.hint[None], size=scene.alpha.shape[-2:], mode="bilinear", align_corners=False)
    return (hint[0] > 0.5).float()  # [1, H, W]


def quality(size: int, seed: int, given: bool) -> list[dict]:
    rows = []
    for scene in scene_set(size, seed=seed):
        background = scene.background_colour if given else None
        alpha, _ = matte(scene.image[None], scene.hint[None], background=background)
        ours = matting_metrics.all_errors(alpha[0], scene.alpha)
        hint = matting_metrics.all_errors(thresholded_hint(scene), scene.alpha)
        rows.append({"subject": scene.subject, "background": scene.background_kind, "ours": ours, "hint": hint})
        LOG.info("%s/%s done", scene.subject, scene.background_kind)
    return rows


def timing(size: int, runs: int) -> list[dict]:
    out = []
    for subject in SUBJECTS:
        scene = make_scene(subject, "gradient", size)
        image, hint = scene.image[None], scene.hint[None]
        matte(image, hint)  # warm-up
        walls, cpus = [], []
        for _ in range(runs):
            start, start_cpu = time.perf_counter(), time.process_time()
            matte(image, hint)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - start_cpu)
        out.append({"subject": subject, "wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)})
    return out


def _mean(rows, side: str, key: str) -> float:
    return statistics.fmean(row[side][key] for row in rows)


def markdown(rows: list[dict], times: list[dict], size: int, timing_size: int, import_s: float) -> str:
    lines = [
        f"Matte vs thresholded hint, {size}x{size}, whole image (SAD, Grad, Conn /1000; MSE x1e-3)",
        "",
        "| subject | background | SAD ours | SAD hint | MSE ours | MSE hint | Grad ours | Grad hint | Conn ours | Conn hint |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        o, h = row["ours"], row["hint"]
        lines.append(
            f"| {row['subject']} | {row['background']} | {o['sad']:.3f} | {h['sad']:.3f} | {1e3 * o['mse']:.3f} | "
            f"{1e3 * h['mse']:.3f} | {o['grad']:.3f} | {h['grad']:.3f} | {o['conn']:.3f} | {h['conn']:.3f} |"
        )
    lines += ["", "| subject | mean SAD ours | mean SAD hint | SAD ratio (hint/ours) | mean MSE ours | mean MSE hint |",
              "|---|---:|---:|---:|---:|---:|"]
    groups = [(s, [r for r in rows if r["subject"] == s]) for s in SUBJECTS]
    groups.append(("blob+hair+ring", [r for r in rows if r["subject"] in OPAQUE_SUBJECTS]))
    for name, group in groups:
        ours, hint = _mean(group, "ours", "sad"), _mean(group, "hint", "sad")
        lines.append(f"| {name} | {ours:.3f} | {hint:.3f} | {hint / max(ours, 1e-12):.1f} | "
                     f"{_mean(group, 'ours', 'mse'):.5f} | {_mean(group, 'hint', 'mse'):.5f} |")
    glass = [r for r in rows if r["subject"] == "glass"]
    worse = [r["background"] for r in glass if r["ours"]["sad"] > r["hint"]["sad"]]
    lines += ["", f"Glass scenes worse than the hint (SAD): {', '.join(worse) if worse else 'none'}", "",
              f"Time per {timing_size}x{timing_size} image (median; torch threads {torch.get_num_threads()}; "
              f"pymatting import {import_s:.2f} s once per process)", "",
              "| subject | wall s | cpu s |", "|---|---:|---:|"]
    lines += [f"| {t['subject']} | {t['wall_s']:.2f} | {t['cpu_s']:.2f} |" for t in times]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--timing-size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--given", action="store_true", help="pass the flat background colour where there is one")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    import pymatting  # noqa: F401  (numba kernels from the cache, or compiled on a first run)

    import_s = time.perf_counter() - start
    rows = quality(args.size, args.seed, args.given)
    times = timing(args.timing_size, args.runs)
    print(markdown(rows, times, args.size, args.timing_size, import_s))
    if args.json:
        args.json.write_text(json.dumps({"quality": rows, "timing": times, "import_s": import_s}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
