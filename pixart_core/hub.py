"""Fetch the default model (PixArt-Σ 1024, diffusers layout) from Hugging Face, for the CLI only.

Only `python -m pixart_core generate` without `--model` calls this; nothing else downloads. Files go to
`$PIXART_ATELIER_CACHE` (default `~/.cache/pixart_atelier`), each written to a temporary name and renamed.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_REPO = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
_PARTS = ("model_index.json", "transformer/", "text_encoder/", "tokenizer/", "vae/", "scheduler/")
_TIMEOUT_S = 30


def _endpoint() -> str:
    return os.environ.get("PIXART_ATELIER_HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _cache_dir() -> Path:
    return Path(os.environ.get("PIXART_ATELIER_CACHE", Path.home() / ".cache" / "pixart_atelier"))


def _wanted(files: list[str]) -> list[str]:
    """The pipeline files: safetensors where both exist, no fp16 duplicates."""
    chosen = [f for f in files if f.startswith(_PARTS) and ".fp16." not in f]
    folders_with_st = {f.rsplit("/", 1)[0] for f in chosen if f.endswith(".safetensors")}
    return [f for f in chosen
            if not ((f.endswith(".bin") or f.endswith(".bin.index.json")) and f.rsplit("/", 1)[0] in folders_with_st)]


def _download(url: str, target: Path) -> None:
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, open(tmp, "wb") as out:  # noqa: S310
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    tmp.replace(target)


def fetch_default_model(repo: str = DEFAULT_REPO) -> Path:
    """Download (once) the diffusers folder of `repo` and return its local path."""
    root = _cache_dir() / repo.replace("/", "--")
    done = root / ".complete"
    if done.exists():
        return root
    try:
        with urllib.request.urlopen(f"{_endpoint()}/api/models/{repo}", timeout=_TIMEOUT_S) as response:  # noqa: S310
            files = [s["rfilename"] for s in json.load(response)["siblings"]]
        for name in _wanted(files):
            target = root / name
            if not target.exists():
                log.info("downloading %s/%s", repo, name)
                _download(f"{_endpoint()}/{repo}/resolve/main/{name}", target)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise ConnectionError(
            f"could not download {repo} from {_endpoint()} ({err}). You seem to be offline: pass --model PATH "
            f"(a PixArt checkpoint or diffusers folder) with --t5 and --vae, or run once with network access."
        ) from err
    done.write_text("ok\n")
    return root
