"""`python -m pixart_core generate --transparent`: RGBA PNGs from a frozen PixArt (`pixart_core.rgba.alfie`)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

log = logging.getLogger("pixart_core")

METADATA_KEY = "pixart_atelier"  # PNG tEXt chunk with the generation settings as JSON


def check_args(args) -> None:
    """Usage errors of --transparent, before anything is loaded."""
    if not args.transparent:
        return
    suffix = Path(args.out).suffix.lower()
    if suffix != ".png":
        raise ValueError(f"--out {args.out}: --transparent writes an RGBA PNG and {suffix or 'no suffix'} cannot "
                         "hold alpha this way; end the name in .png")
    for flag in ("--image", "--controlnet"):
        if getattr(args, flag[2:]):
            raise ValueError(f"--transparent does not combine with {flag}; leave one of them out")
    if importlib.util.find_spec("pymatting") is None:
        raise ValueError("--transparent needs pymatting for the matte: pip install pymatting")


def _settings(args) -> str:
    return json.dumps({"prompt": args.prompt, "negative": args.negative, "seed": args.seed, "steps": args.steps,
                       "cfg": args.cfg, "sampler": args.sampler, "width": args.width, "height": args.height,
                       "binning": not args.no_binning, "transparent": "alfie centring + attention matte"})


def generate_files(pipe, args, targets: list[Path]) -> int:
    """Generate len(targets) RGBA images and write them as PNGs: each to a hidden temporary PNG beside its
    target first, then all moved in place, so a failure leaves no target touched."""
    from tqdm import tqdm

    from .layers.atomic_io import write_files_atomic
    from .rgba.rgba_io import save_rgba_png

    bar = tqdm(total=1, desc="sampling", unit="step", disable=None)

    def on_step(step: int, total: int, *_):
        bar.total = total
        bar.update(1)

    result = pipe.generate_transparent(
        args.prompt, negative_prompt=args.negative or None, height=args.height, width=args.width,
        num_inference_steps=args.steps, guidance_scale=args.cfg, sampler=args.sampler, seed=args.seed,
        num_images_per_prompt=len(targets), use_resolution_binning=not args.no_binning, callback=on_step)
    bar.close()
    targets[0].parent.mkdir(parents=True, exist_ok=True)
    text = {METADATA_KEY: _settings(args)}
    write_files_atomic(targets, lambda index, temp: save_rgba_png(temp, result.rgba[index:index + 1], text),
                       f"--out {args.out}")  # result.rgba[index:index + 1]: [1, 4, H, W]
    for target in targets:
        log.info("wrote %s (%dx%d RGBA)", target, args.width, args.height)
    return 0
