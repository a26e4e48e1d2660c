"""Peak host memory of `load_transformer` per checkpoint layout and target dtype.

Writes a full-width PixArt-Σ-1024 checkpoint (width 1152, T5 width 4096, `--depth` blocks; depth 12 is about
1.1 GB fp32) as an official .pth, an official .safetensors and a diffusers transformer folder (or uses the
`--ckpt` paths), then loads each one in a FRESH subprocess per target dtype. The child resets the RSS high-water
mark after its imports (`/proc/self/clear_refs` = 5), loads, and reads VmHWM from /proc/self/status:

    ratio = (VmHWM - RSS before loading) / (bytes of the loaded weights in the target dtype)   target <= 1.2

Usage: python benchmarks/bench_load_memory.py [--depth 12] [--dtypes fp32,bf16,fp16] [--ckpt PATH ...]
                                              [--workdir DIR] [--json out.json] [--keep]
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_load_memory")
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
TARGET_RATIO = 1.2


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def run_child(path: str, dtype_name: str) -> dict:
    """Inside the fresh subprocess: load once and measure. Returns the result row."""
    import torch

    from pixart_core.pixart import model as _model  # noqa: F401  (import cost outside the measurement)
    from pixart_core.pixart.load import load_transformer

    dtype = getattr(torch, DTYPES[dtype_name])
    gc.collect()
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    model = load_transformer(path, dtype=dtype)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    after = _status_kib("VmRSS")
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    delta = (peak - baseline) * 1024
    return {"path": path, "layout": model.detection.layout, "dtype": dtype_name, "seconds": round(seconds, 2),
            "baseline_rss_mb": round(baseline / 1024, 1), "peak_delta_mb": round(delta / 2**20, 1),
            "rss_after_delta_mb": round((after - baseline) / 1024, 1), "weights_mb": round(size / 2**20, 1),
            "ratio": round(delta / size, 3), "summary": model.detection.summary()}


def write_checkpoints(workdir: Path, depth: int) -> dict[str, Path]:
    """A full-width random Σ-1024 model with `depth` blocks in three layouts."""
    from pixart_core.testing.files import save_safetensors, save_torch
    from pixart_core.pixart.config import PRESETS
    from pixart_core.testing.transformers import random_official_state_dict, write_diffusers_folder

    cfg = PRESETS["sigma-1024"].with_(depth=depth, has_null_caption=True)
    log.info("writing a %s checkpoint (depth %d) in three layouts under %s", cfg.variant, depth, workdir)
    state = random_official_state_dict(cfg, seed=0)
    paths = {"official-pth": workdir / "pixart-sigma-1024.pth",
             "official-safetensors": workdir / "pixart-sigma-1024.safetensors",
             "diffusers": workdir / "transformer"}
    save_torch({"state_dict": state}, paths["official-pth"])
    save_safetensors(state, paths["official-safetensors"])
    write_diffusers_folder(state, cfg, paths["diffusers"])
    return paths


def run_parent(args: argparse.Namespace) -> list[dict]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pixart-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    wrote = not args.ckpt
    paths = ({f"ckpt{i}": Path(p) for i, p in enumerate(args.ckpt)} if args.ckpt
             else write_checkpoints(workdir, args.depth))
    rows = []
    try:
        for label, path in paths.items():
            for dtype_name in args.dtypes.split(","):
                proc = subprocess.run([sys.executable, __file__, "--child", str(path), dtype_name],
                                      capture_output=True, text=True, cwd=ROOT)
                if proc.returncode:
                    raise RuntimeError(f"child failed for {path} {dtype_name}:\n{proc.stderr[-3000:]}")
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["label"] = label
                rows.append(row)
                log.info("%-22s %-5s %6.2fs  baseline %7.1f MB  peak +%8.1f MB  weights %8.1f MB  ratio %.3f %s",
                         label, dtype_name, row["seconds"], row["baseline_rss_mb"], row["peak_delta_mb"],
                         row["weights_mb"], row["ratio"], "ok" if row["ratio"] <= TARGET_RATIO else "OVER TARGET")
    finally:
        if wrote and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif wrote:
            log.info("kept the checkpoints in %s", workdir)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--depth", type=int, default=12, help="blocks of the written checkpoint (28 = 2.4 GB)")
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--ckpt", action="append", help="benchmark this file/folder instead (repeatable)")
    parser.add_argument("--workdir", help="where to write the checkpoints (default: a new temp folder)")
    parser.add_argument("--json", help="write the result rows to this file")
    parser.add_argument("--keep", action="store_true", help="keep the written checkpoints")
    args = parser.parse_args(argv)
    if args.child:
        logging.disable(logging.WARNING)
        sys.stdout.write(json.dumps(run_child(*args.child)) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = run_parent(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    worst = max(row["ratio"] for row in rows)
    log.info("worst ratio %.3f (target <= %.1f)", worst, TARGET_RATIO)
    return 0 if worst <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
