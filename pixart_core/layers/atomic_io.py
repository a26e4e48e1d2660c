"""Atomic file and folder writes: a hidden temporary beside the target, then `os.replace`; nothing left on failure."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _temp_name(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def write_file_atomic(path: str | Path, write: Callable[[BinaryIO], None], what: str) -> Path:
    """Call `write(handle)` on a temporary file beside `path`, fsync it and move it over `path`.

    On any error the temporary file is removed, `path` is untouched, and an OSError names `path` (errors of
    the writer itself other than OSError propagate unchanged after the clean-up).
    """
    path = Path(path)
    temp = _temp_name(path, "tmp")
    try:
        descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as open()
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as err:
        raise OSError(f"path {path}: could not write the {what} ({err.strerror or err}); nothing written") from err
    finally:
        temp.unlink(missing_ok=True)
    return path


def write_folder_atomic(path: str | Path, fill: Callable[[Path], None], may_replace: Callable[[Path], bool],
                        what: str) -> Path:
    """Build a folder with `fill(temp_dir)` beside `path`, then move it into place.

    An existing folder at `path` is replaced only if `may_replace(path)` says it holds nothing but what this
    writer makes; the old folder is moved aside first and deleted after the new one is in place. On failure the
    temporary folder is removed and the old folder (if any) is restored.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"path {path}: exists and is not a folder; give a folder name or a .psd/.ora file")
    if path.is_dir() and any(path.iterdir()) and not may_replace(path):
        raise ValueError(f"path {path}: folder holds files other than a saved layer stack; "
                         f"choose a new or empty folder")
    temp = _temp_name(path, "tmpdir")
    old = _temp_name(path, "old")
    moved_old = False
    try:
        os.mkdir(temp)
        fill(temp)
        if path.is_dir():
            os.replace(path, old)
            moved_old = True
        os.replace(temp, path)
    except OSError as err:
        if moved_old and not path.exists():
            os.replace(old, path)
            moved_old = False
        raise OSError(f"path {path}: could not write the {what} ({err.strerror or err}); nothing written") from err
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        if moved_old:
            shutil.rmtree(old, ignore_errors=True)
    return path


def write_files_atomic(targets: list[Path], save: Callable[[int, Path], None], argument: str) -> None:
    """`save(index, temp)` each target into a hidden temporary file beside it, then move them all in place.

    On any failure (Ctrl-C included) every temporary file is removed and no target is replaced; an OSError
    names `argument` (e.g. "--out x.png")."""
    temps = [target.with_name(f".{target.stem}.partial{target.suffix}") for target in targets]
    try:
        for index, temp in enumerate(temps):
            save(index, temp)
        for temp, target in zip(temps, targets):
            temp.replace(target)
    except OSError as err:
        raise OSError(f"{argument}: could not write the image ({err.strerror or err}); nothing written") from None
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
