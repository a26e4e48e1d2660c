"""Measure a shapes-world pipeline folder: the figures its README and benchmarks/RESULTS.md report.

    python tools/evaluate_shapes_world.py tests/fixtures/shapes_world

Prints a markdown table: text-to-image placement and background over 50 held-out prompts, the attention IoU
and the ControlNet IoU over 30 held-out layouts, plus the load time and the time of one 128² image at 20 steps.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # pixart_core imported from this checkout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT / "tests" / "fixtures" / "shapes_world"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--layouts", type=int, default=30)
    parser.add_argument("--skip", action="append", default=[], choices=["t2i", "attention", "controlnet", "transparency"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import torch

    from pixart_core.testing import shapes_world as world
    from pixart_core.testing import shapes_world_eval as evaluate

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe = world.load_pipeline(args.folder)
    controlnet = world.load_world_controlnet(args.folder)
    load_s = time.perf_counter() - started
    world.generate(pipe, "a red circle on the left, on a grey background")  # warm-up
    started = time.perf_counter()
    world.generate(pipe, "a blue star at the top right, on a white background", seed=1)
    image_s = time.perf_counter() - started
    rows = [("load (s)", f"{load_s:.2f}"), ("one 128² image, 20 steps (s)", f"{image_s:.2f}")]
    if "t2i" not in args.skip:
        t2i = evaluate.text_to_image_figures(pipe, count=args.prompts)
        rows += [(f"prompts with every shape placed ({t2i['count']})", f"{t2i['prompts']:.0%}"),
                 ("shapes placed", f"{t2i['shapes']:.0%}"), ("background right", f"{t2i['backgrounds']:.0%}")]
    if "attention" not in args.skip:
        attention = evaluate.attention_figures(pipe, count=args.layouts)
        rows.append((f"attention IoU ({attention['shapes']} shapes)", f"{attention['iou']:.3f}"))
    if "controlnet" not in args.skip:
        control = evaluate.controlnet_figures(pipe, controlnet, count=args.layouts)
        rows.append((f"ControlNet IoU ({control['shapes']} shapes)", f"{control['iou']:.3f}"))
    if "transparency" not in args.skip:
        rgba = evaluate.transparency_figures(pipe, count=args.layouts)
        rows += [(f"transparency: alpha IoU ({rgba['count']} single shapes)", f"{rgba['iou']:.3f}"),
                 ("transparency: mean absolute alpha error", f"{rgba['mae']:.3f}")]
    print("| figure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
