"""Command line: `python -m pixart_core generate|layers|make-tiny|info ...` (see `--help`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from . import cli_layers
from .dtypes import DTYPES, default_dtype, dtype_from_name
from .limits import check_sampled_size
from .sampling import DEFAULT_SAMPLER, DEFAULT_STEPS, MAX_STEPS, SAMPLERS, sampler_spec

log = logging.getLogger("pixart_core")


def _sampler_name(name: str) -> str:
    """argparse type of --sampler: the library's one sampler check, its message as the usage error."""
    try:
        sampler_spec(name, "sampler")  # argparse prefixes "argument --sampler: "
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return name


MAX_CFG = 100.0
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # --out suffix -> PIL format


def _number(kind, text: str, what: str):
    """`kind(text)` or an argparse usage error saying what the flag takes (argparse names the flag)."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _steps(text: str) -> int:
    value = _number(int, text, "a whole number of steps")
    if not 1 <= value <= MAX_STEPS:
        raise argparse.ArgumentTypeError(f"{value} is out of range: pass 1 to {MAX_STEPS} (the 1000-step training "
                                         "schedule has 999 intervals) or leave it out for the sampler's default")
    return value


def _cfg(text: str) -> float:
    value = _number(float, text, "a number")
    if not 0.0 <= value <= MAX_CFG:  # False for NaN too
        raise argparse.ArgumentTypeError(f"{text} is out of range: pass a guidance scale from 0 to {MAX_CFG:g} "
                                         "(usual: 4.5; 1 or less turns guidance off)")
    return value


def _batch(text: str) -> int:
    value = _number(int, text, "a whole number of images")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range: pass 1 or more images per prompt")
    return value


def _seed(text: str) -> int:
    value = _number(int, text, "a whole number")
    if not 0 <= value <= 2**64 - 1:
        raise argparse.ArgumentTypeError(f"{value} is out of range: pass a seed from 0 to 2**64-1")
    return value


def _strength(text: str) -> float:
    value = _number(float, text, "a number")
    if not 0.0 < value <= 1.0:  # False for NaN too
        raise argparse.ArgumentTypeError(f"{text} is out of range: pass a denoise strength above 0 and at most 1")
    return value


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text-to-image (or image-to-image) to a PNG file")
    p.add_argument("--model", help="PixArt transformer: a diffusers pipeline folder, a transformer folder or a "
                   "checkpoint file (.pth/.safetensors). Without it, PixArt-Σ 1024 is fetched from Hugging Face.")
    p.add_argument("--t5", help="T5 text encoder folder or file (needed unless --model is a pipeline folder)")
    p.add_argument("--tokenizer", help="T5 tokenizer folder (default: next to the T5 weights)")
    p.add_argument("--vae", help="VAE folder or file (needed unless --model is a pipeline folder)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--out", required=True,
                   help="output image path, .png, .jpg/.jpeg or .webp (batches add _1, _2, ...)")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--steps", type=_steps, help=f"sampling steps, 1..{MAX_STEPS} (default: " + ", ".join(
        f"{name} {steps}" for name, steps in DEFAULT_STEPS.items()) + ")")
    p.add_argument("--cfg", type=_cfg, help=f"guidance scale, 0..{MAX_CFG:g} (default: 4.5, LCM 0)")
    p.add_argument("--sampler", type=_sampler_name, choices=SAMPLERS,
                   help=f"sampling algorithm (default: {DEFAULT_SAMPLER}; lcm with --lcm or PixArt-δ LCM models)")
    p.add_argument("--seed", type=_seed, default=0, help="noise seed, 0..2**64-1 (default: 0)")
    p.add_argument("--batch", type=_batch, default=1, help="images per prompt")
    p.add_argument("--no-binning", action="store_true", help="generate at the exact size, not the nearest bin")
    p.add_argument("--image", help="input image for image-to-image")
    p.add_argument("--strength", type=_strength, default=0.6, help="image-to-image denoise strength (0..1]")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="model dtype (default: bf16 on CUDA where supported, else fp16; on the CPU bf16 with native "
                        "bf16 arithmetic (AVX512-BF16/AMX), else fp32)")
    p.add_argument("--t5-dtype", choices=sorted(DTYPES), default=None, help="T5 dtype (default: as --dtype)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--variant", help="override detection with a variant name (e.g. sigma-1024, alpha-512)")
    p.add_argument("--lcm", action="store_true", help="treat the model as PixArt-δ LCM (4 steps, no CFG)")
    p.add_argument("--transparent", action="store_true", help="write an RGBA PNG: the subject centred on a plain "
                   "background, then matted from its cross-attention (training-free, Alfie; needs pymatting)")
    c = p.add_argument_group("PixArt-δ ControlNet")
    c.add_argument("--controlnet", help="ControlNet file or folder (official .pth, controlnet-only .pth/.safetensors, "
                   "diffusers folder), e.g. PixArt-XL-2-1024-ControlNet.pth with --model PixArt-XL-2-1024-MS")
    c.add_argument("--control-image", help="control image (an edge map, or a photo with --control-preprocess)")
    c.add_argument("--control-strength", type=float, default=1.0, help="ControlNet strength (default: 1.0)")
    c.add_argument("--control-start", type=float, default=0.0, help="fraction of the steps where control starts (0)")
    c.add_argument("--control-end", type=float, default=1.0, help="fraction of the steps where control ends (1)")
    c.add_argument("--control-preprocess", choices=("none", "hed", "canny"), default="none",
                   help="turn --control-image into edges first, at the generation size: hed (needs --hed, as "
                        "PixArt-δ was trained) or canny (default: none, the image is the edge map)")
    c.add_argument("--hed", help="ControlNetHED.pth (lllyasviel/Annotators) for --control-preprocess hed")
    c.add_argument("--canny-low", type=float, default=100.0, help="Canny low threshold, 0..255 (default: 100)")
    c.add_argument("--canny-high", type=float, default=200.0, help="Canny high threshold, 0..255 (default: 200)")


def _check_control_args(args) -> None:
    """Usage errors of the ControlNet flags, before anything is loaded."""
    if bool(args.controlnet) != bool(args.control_image):
        raise ValueError("--controlnet and --control-image go together: pass both (or neither)")
    if args.control_preprocess == "hed" and not args.hed:
        raise ValueError("--control-preprocess hed needs --hed PATH (ControlNetHED.pth from lllyasviel/Annotators)")
    for flag in ("--control-image", "--controlnet", "--hed"):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value and not Path(value).exists():
            raise FileNotFoundError(f"{flag} {value}: file not found")


INPUT_FLAGS = ("--model", "--t5", "--tokenizer", "--vae", "--image", "--controlnet", "--control-image", "--hed")


def _out_targets(args) -> list[Path]:
    """Every file generate writes: --out, then _1, _2, ... for a batch."""
    out = Path(args.out)
    return [out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(args.batch)]


def _same_file(a: Path, b: Path) -> bool:
    """True when a and b are one file: equal resolved paths (symlinks followed), or `os.path.samefile` (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _check_out(args) -> None:
    """Refuse an --out that cannot be written or would replace an input, before anything is loaded."""
    if not args.out.strip():
        raise ValueError("--out is empty: pass an image file path such as out.png")
    out = Path(args.out)
    for target in _out_targets(args):
        if target.is_dir():
            raise ValueError(f"--out {target} is a folder; pass an image file path, e.g. {target / 'out.png'}")
        for flag in INPUT_FLAGS:
            value = getattr(args, flag[2:].replace("-", "_"))
            if value and _same_file(target, Path(value)):
                raise ValueError(f"--out {target}: is the {flag} file; writing there would replace it, "
                                 "pass another output path")
    if out.suffix.lower() not in IMAGE_FORMATS:
        raise ValueError(f"--out {args.out}: unsupported file type {out.suffix or '(none)'!r}; "
                         "end the name in .png, .jpg, .jpeg or .webp")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:  # the nearest folder that exists, made on writing
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"--out {args.out}: {folder} is a file, not a folder; pass another output path")
    if folder != out.parent:  # folders still to make: permissions are all there is to check without making them
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"--out {args.out}: cannot write in {folder} (permission denied); pass another path")
        return
    try:  # a probe file finds what permissions do not show (read-only mounts, /proc, /sys)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as err:
        raise ValueError(f"--out {args.out}: cannot write in {folder} ({err.strerror or err}); "
                         "pass another output path") from None


def _write_images(images, args) -> None:
    """Save every image to a temporary file beside its target, then move them all in place; on any failure
    (Ctrl-C included) the temporary files are removed and no target is touched."""
    targets = _out_targets(args)
    image_format = IMAGE_FORMATS[Path(args.out).suffix.lower()]
    targets[0].parent.mkdir(parents=True, exist_ok=True)
    from .layers.atomic_io import write_files_atomic

    write_files_atomic(targets, lambda index, temp: images[index].save(temp, format=image_format),
                       f"--out {args.out}")
    for image, target in zip(images, targets):
        log.info("wrote %s (%dx%d)", target, image.width, image.height)


def _utf8_text(text: str, flag: str) -> str:
    """argv bytes that are not UTF-8 (surrogate-escaped on Linux) decoded with U+FFFD in their place, with a warning."""
    try:
        fixed = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a lone surrogate outside U+DC80..U+DCFF (not from argv bytes)
        fixed = text.encode("utf-8", "replace").decode("utf-8")
    if fixed != text:
        log.warning("%s: bytes that are not UTF-8 were replaced by U+FFFD; pass UTF-8 text", flag)
    return fixed


def _control_image(args, image, size: tuple[int, int], device):
    """The --control-image (`image`, read as [1, 3, H, W]) as the pipeline's control_image [1, 1 or 3, H, W]
    in 0..1; preprocessed at the generation size (PixArt-α `app/app_controlnet.py` runs HED on the image brought
    to the bin)."""
    from .bins import resize_and_crop

    if args.control_preprocess == "none":
        return image
    image = resize_and_crop(image, size[1], size[0])  # [1, 3, h, w] the generation size
    if args.control_preprocess == "canny":
        from .controlnet.canny import canny_edges

        return canny_edges(image, args.canny_low, args.canny_high)  # [1, 1, h, w]
    from .controlnet.hed import hed_edges, load_hed

    return hed_edges(load_hed(args.hed, device=device), image)  # [1, 1, h, w]


def _generate(args) -> int:
    import torch
    from tqdm import tqdm

    from .cli_transparent import check_args, generate_files
    from .devices import check_device
    from .image_io import read_rgb
    from .pipeline import PixArtPipeline

    check_args(args)  # --transparent's usage errors
    _check_control_args(args)
    _check_out(args)
    if args.no_binning:  # binned runs sample at a trained bin and resize only the output (pipeline.py)
        check_sampled_size(args.height, args.width, "--height/--width")
    device = check_device(args.device) if args.device else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype_from_name(args.dtype) if args.dtype else default_dtype(device)
    image = read_rgb(args.image, "--image")[None].repeat(args.batch, 1, 1, 1) if args.image else None  # [B, 3, H, W]
    hint = read_rgb(args.control_image, "--control-image")[None] if args.control_image else None  # [1, 3, H, W]
    args.prompt, args.negative = (_utf8_text(text, flag) for text, flag in
                                  ((args.prompt, "--prompt"), (args.negative, "--negative")))
    model = args.model
    if model is None:
        from .hub import fetch_default_model

        model = fetch_default_model()
    pipe = PixArtPipeline.from_pretrained(model, text_encoder=args.t5, tokenizer=args.tokenizer, vae=args.vae,
                                          dtype=dtype, device=device, variant=args.variant,
                                          text_encoder_dtype=dtype_from_name(args.t5_dtype) if args.t5_dtype else None,
                                          lcm=True if args.lcm else None)
    log.info("model: %s", getattr(pipe.transformer, "detection", None) and pipe.transformer.detection.summary())
    if args.transparent:
        return generate_files(pipe, args, _out_targets(args))
    control = {}
    if args.controlnet:
        from .controlnet import load_controlnet

        controlnet = load_controlnet(args.controlnet, dtype=dtype, device=device)
        log.info("controlnet: %s", controlnet.summary)
        size = pipe.generation_size(args.height, args.width, not args.no_binning)
        control = {"controlnet": controlnet, "control_image": _control_image(args, hint, size, device),
                   "controlnet_conditioning_scale": args.control_strength,
                   "control_guidance_start": args.control_start, "control_guidance_end": args.control_end}
    bar = tqdm(total=1, desc="sampling", unit="step", disable=None)

    def on_step(step: int, total: int, *_):
        bar.total = total
        bar.update(1)

    images = pipe(args.prompt, negative_prompt=args.negative, height=args.height, width=args.width,
                  num_inference_steps=args.steps, guidance_scale=args.cfg, sampler=args.sampler, seed=args.seed,
                  use_resolution_binning=not args.no_binning, num_images_per_prompt=args.batch,
                  image=image, strength=args.strength, callback=on_step, **control)
    bar.close()
    _write_images(images, args)
    return 0


def _add_make_tiny(sub) -> None:
    p = sub.add_parser("make-tiny", help="write tiny random-weight checkpoints in every supported layout")
    p.add_argument("out_dir")
    p.add_argument("--tokenizer", help="T5 v1.1 tokenizer folder (tokenizer.json or spiece.model) to copy into the "
                   "tiny T5 folders and pipelines, e.g. ComfyUI's comfy/text_encoders/t5_tokenizer")
    p.add_argument("--seed", type=_seed, default=0, help="noise seed, 0..2**64-1 (default: 0)")


def _make_tiny(args) -> int:
    try:
        from .testing.suite import write_tiny_suite  # test fixtures: imported only by this command
    except ModuleNotFoundError as err:  # the Comfy Registry package leaves the fixtures out (.comfyignore)
        raise FileNotFoundError("make-tiny needs pixart_core/testing/, which this installation leaves out; "
                                "run it from a git clone of the repository") from err

    tok = Path(args.tokenizer) if args.tokenizer else None
    if tok is not None and not any((tok / name).is_file() for name in ("tokenizer.json", "spiece.model")):
        raise FileNotFoundError(f"--tokenizer {tok}: no tokenizer.json or spiece.model there; "
                                "pass a T5 v1.1 tokenizer folder")
    if tok is None:
        log.warning("no T5 tokenizer given (--tokenizer DIR with tokenizer.json or spiece.model, e.g. ComfyUI's "
                    "comfy/text_encoders/t5_tokenizer): the pipelines/ folders and T5 folders with a tokenizer "
                    "are not written")
    out = Path(args.out_dir)
    if not args.out_dir.strip():
        raise ValueError("make-tiny out_dir is empty; pass a folder to write the tiny checkpoints into")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"make-tiny out_dir {out}: is an existing file, not a folder; pass a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()  # probe: read-only mounts, /proc, permissions
    except OSError as err:
        raise OSError(f"make-tiny out_dir {out}: cannot write there ({err.strerror or err}); "
                      "pass a writable folder") from err
    written = write_tiny_suite(out, tokenizer_dir=tok, seed=args.seed)
    for name, path in sorted(written.items()):
        print(f"{name}\t{path}")  # noqa: T201 - command output
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="detect what a PixArt checkpoint file or folder is")
    p.add_argument("path")


def _info(args) -> int:
    import stat

    from .errors import CheckpointError
    from .pixart.load import inspect_transformer

    path = Path(args.path)
    if not path.exists():
        raise CheckpointError(f"info {path}: no such file or folder.")
    if not (path.is_dir() or stat.S_ISREG(path.stat().st_mode)):  # a FIFO or device would block the read
        raise CheckpointError(f"info {path}: not a regular file or folder; pass a weights file or model folder.")
    detection = inspect_transformer(path)
    print(detection.summary())  # noqa: T201 - command output
    for line in detection.evidence:
        print(f"  - {line}")  # noqa: T201 - command output
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pixart_core", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_make_tiny(sub)
    _add_info(sub)
    cli_layers.add_parser(sub, {"seed": _seed, "steps": _steps, "cfg": _cfg, "sampler": _sampler_name})
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from .errors import CheckpointError

    try:
        return {"generate": _generate, "layers": cli_layers.run, "make-tiny": _make_tiny,
                "info": _info}[args.command](args)
    except (CheckpointError, OSError, ValueError) as err:  # OSError covers FileNotFoundError, ConnectionError
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: generate writes only after sampling, through temporary files
        log.error("interrupted; nothing written" if args.command in ("generate", "layers") else "interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
