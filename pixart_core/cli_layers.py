"""`python -m pixart_core layers`: a layer stack (PSD, ORA or a folder of PNGs) from a region layout, with a
progress bar per phase (`pixart_core.layers.engine`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("pixart_core")

STACK_SUFFIXES = (".psd", ".ora")


def add_parser(sub, number_types: dict) -> None:
    """The `layers` subcommand; number_types holds the argparse types of __main__ (steps, cfg, seed, sampler)."""
    from .dtypes import DTYPES
    from .sampling import DEFAULT_SAMPLER, MAX_STEPS, SAMPLERS

    p = sub.add_parser("layers", help="a layered picture (PSD, ORA or PNG folder) from a region layout JSON")
    p.add_argument("--model", required=True, help="PixArt pipeline folder (or transformer file/folder with --t5 "
                   "and --vae)")
    p.add_argument("--t5", help="T5 text encoder folder or file (needed unless --model is a pipeline folder)")
    p.add_argument("--tokenizer", help="T5 tokenizer folder (default: next to the T5 weights)")
    p.add_argument("--vae", help="VAE folder or file (needed unless --model is a pipeline folder)")
    p.add_argument("--layout", required=True, help="layout JSON file: width, height, prompt, negative, background, "
                   "layers [{name, prompt, box: [x0, y0, x1, y1]}, ...] bottom to top")
    p.add_argument("--out", required=True, help="output: a .psd or .ora file, or a folder (no extension) of PNGs "
                   "plus layout.json")
    p.add_argument("--seed", type=number_types["seed"], default=0, help="noise seed (default: 0)")
    p.add_argument("--steps", type=number_types["steps"], help=f"sampling steps, 1..{MAX_STEPS} (default: the "
                   "sampler's)")
    p.add_argument("--cfg", type=number_types["cfg"], help="guidance scale (default: 4.5, LCM 0)")
    p.add_argument("--sampler", type=number_types["sampler"], choices=SAMPLERS,
                   help=f"sampling algorithm (default: {DEFAULT_SAMPLER})")
    p.add_argument("--threads", type=_threads, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="model dtype (default: as generate)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")


def _threads(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of threads") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range: pass 1 or more threads")
    return value


def _read_layout(path: str):
    """The validated layout of the --layout file (ValueError / OSError naming the flag)."""
    from .layers import parse_layout
    from .layers.engine import check_canvas

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--layout {path}: file not found; pass a layout JSON file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--layout {path}: not UTF-8 text; save the layout as UTF-8 JSON") from None
    try:
        layout = parse_layout(text)
        check_canvas(layout.width, layout.height, 16)
    except ValueError as err:
        raise ValueError(f"--layout {path}: {err}") from None
    return layout


def _check_out(out: str) -> Path:
    """The --out path, refused before any model work when it cannot be a stack file or folder."""
    if not out.strip():
        raise ValueError("--out is empty: pass poster.psd, poster.ora or a folder name")
    path = Path(out)
    suffix = path.suffix.lower()
    if path.is_dir():
        return path
    if suffix and suffix not in STACK_SUFFIXES:
        raise ValueError(f"--out {out}: unknown extension {path.suffix!r}; use .psd, .ora or a folder name "
                         f"without extension")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, not a folder; pass another output path")
    return path


class PhaseBars:
    """`on_progress(phase, step, total)`: one tqdm bar per phase."""

    def __init__(self):
        self.phase = None
        self.bar = None

    def __call__(self, phase: str, step: int, total: int) -> None:
        from tqdm import tqdm

        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = tqdm(total=total, desc=phase, unit="step", disable=None)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args) -> int:
    import torch

    from .devices import check_device
    from .dtypes import default_dtype, dtype_from_name
    from .pipeline import PixArtPipeline

    layout = _read_layout(args.layout)
    out = _check_out(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = check_device(args.device) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype_from_name(args.dtype) if args.dtype else default_dtype(device)
    pipe = PixArtPipeline.from_pretrained(args.model, text_encoder=args.t5, tokenizer=args.tokenizer, vae=args.vae,
                                          dtype=dtype, device=device)
    bars = PhaseBars()
    try:
        stack = pipe.generate_layers(layout, seed=args.seed, num_inference_steps=args.steps,
                                     guidance_scale=args.cfg, sampler=args.sampler, on_progress=bars)
    finally:
        bars.close()
    written = stack.save(out)
    log.info("wrote %s (%d layers, %dx%d)", written, len(stack), stack.width, stack.height)
    return 0
