"""Train the shapes world (a tiny PixArt with known ground truth) and write it as a pipeline folder.

    python tools/train_shapes_world.py --out tests/fixtures/shapes_world --seed 0
    python tools/train_shapes_world.py --out /tmp/sw --quick        # a few steps of every phase (what CI runs)

Runs on the CPU with 2 threads (the committed fixture: see tests/fixtures/shapes_world/README.md for the time
taken). The T5 tokenizer comes from --tokenizer (default: the T5_TOKENIZER_DIR environment variable, else the
shared test data folder). Evaluate a trained folder with `tools/evaluate_shapes_world.py`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # pixart_core imported from this checkout

DEFAULT_TOKENIZER = ROOT.parent / "shared" / "testdata" / "t5_tokenizer"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="pipeline folder to write (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few steps of each phase (tests)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--vae-from", help="reuse the VAE of an earlier run's folder with the same plan (skips the "
                        "VAE phase; its seconds are then not part of this run's total)")
    parser.add_argument("--snapshots", help="folder for the DiT's EMA weights every 500 steps (to watch a run)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a TrainPlan field (experiments; the fixture uses the defaults)")
    parser.add_argument("--tokenizer", default=os.environ.get("T5_TOKENIZER_DIR", str(DEFAULT_TOKENIZER)),
                        help="folder with the T5 v1.1 tokenizer (tokenizer.json or spiece.model)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    import torch

    from pixart_core.t5.tokenizer import load_t5_tokenizer
    from pixart_core.testing import shapes_training as training
    from pixart_core.testing.shapes_world_files import write_world

    tokenizer_dir = Path(args.tokenizer)
    if not tokenizer_dir.is_dir():
        parser.error(f"--tokenizer {tokenizer_dir} is not a folder; pass the T5 v1.1 tokenizer folder")
    out = Path(args.out).resolve()
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a folder")
    torch.set_num_threads(args.threads)
    plan = training.TrainPlan(seed=args.seed)
    plan = plan.quick() if args.quick else plan
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in plan.__dataclass_fields__:
            parser.error(f"--set {item}: unknown field {name!r}")
        kind = type(getattr(plan, name))
        try:
            if kind is bool and value.lower() not in ("true", "false"):
                raise ValueError(value)
            parsed = value.lower() == "true" if kind is bool else kind(value)
        except ValueError:
            parser.error(f"--set {item}: {name} takes a {kind.__name__}" + (" (true or false)" if kind is bool else ""))
        plan = replace(plan, **{name: parsed})
    tokenizer = load_t5_tokenizer(tokenizer_dir)
    started = time.perf_counter()
    vae = None
    if args.vae_from:
        from pixart_core.vae import load_vae

        vae = load_vae(Path(args.vae_from) / "vae", dtype=torch.float32).eval().requires_grad_(False)
    if args.snapshots:
        Path(args.snapshots).mkdir(parents=True, exist_ok=True)

    def save_snapshot(step, model):
        torch.save(model.state_dict(), Path(args.snapshots) / f"dit_{step}.pt")
    trained = training.run(plan, tokenizer, vae=vae, snapshot=save_snapshot if args.snapshots else None)
    trained["seconds"]["total"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_world(staging, plan, trained, tokenizer_dir)
        kept = [p for p in (out / "README.md",) if p.is_file()]
        for path in kept:
            shutil.copy2(path, staging / path.name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logging.info("wrote %s in %.0f s: %s", out, trained["seconds"]["total"],
                 ", ".join(f"{k} {v:.0f} s" for k, v in trained["seconds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
