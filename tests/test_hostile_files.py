"""Files that lie (issue 12): corrupt safetensors headers, odd paths for `info`, shard indexes pointing out of
their folder, broken JSON configs, symlink loops in model folders, and `make-tiny` into bad places. Each is
refused with a message naming the file or argument; nothing is lost or left behind."""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from pixart_core.__main__ import main
from pixart_core.checkpoint_io import StateDictReader, open_weights, read_json, weight_files
from pixart_core.errors import CheckpointError
from pixart_core.pipeline import PipelinePaths


def write_safetensors(path: Path, header: dict, data: bytes) -> Path:
    """A safetensors file with exactly this header and data section (no checks, so it can lie)."""
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def f32(shape, begin, end):
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}


VALID = {"a": f32([2], 0, 8), "b": f32([1], 8, 12)}

CORRUPT_HEADERS = {
    "dtype_not_string": ({"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 8]}}, 8, "dtype 5"),
    "dtype_unknown": ({"a": {"dtype": "F31", "shape": [2], "data_offsets": [0, 8]}}, 8, "unknown dtype 'F31'"),
    "shape_not_list": ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, 8, "shape '2'"),
    "shape_negative": ({"a": f32([-2], 0, 8)}, 8, "shape [-2]"),
    "shape_float": ({"a": f32([2.0], 0, 8)}, 8, "shape [2.0]"),
    "offsets_three": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}}, 8, "data_offsets [0, 4, 8]"),
    "offsets_strings": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]}}, 8, "data_offsets"),
    "offsets_reversed": ({"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}}, 8, "ending before"),
    "entry_not_object": ({"a": [1, 2]}, 8, "not an object"),
    "overlap": ({"a": f32([2], 0, 8), "b": f32([2], 4, 12)}, 12, "overlaps"),
    "gap": ({"a": f32([1], 0, 4), "b": f32([1], 8, 12)}, 12, "gap"),
    "range_short": ({"a": f32([3], 0, 8)}, 8, "needs 12 bytes"),
    "range_long": ({"a": f32([1], 0, 8)}, 8, "needs 4 bytes"),
    "past_end": ({"a": f32([4], 0, 16)}, 8, "truncated"),
    "trailing_bytes": ({"a": f32([2], 0, 8)}, 12, "after the last tensor"),
    "metadata_not_strings": ({"__metadata__": {"k": 1}, "a": f32([2], 0, 8)}, 8, "__metadata__"),
    "header_not_object": ([1, 2], 0, "not an object"),
}


def test_valid_handmade_file_loads(tmp_path):
    data = torch.tensor([1.0, 2.0, 3.0]).numpy().tobytes()
    with StateDictReader(write_safetensors(tmp_path / "ok.safetensors", VALID, data)) as reader:
        assert reader.get("a").tolist() == [1.0, 2.0] and reader.get("b").tolist() == [3.0]


def test_file_written_by_the_safetensors_library_loads(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"z": torch.zeros(0), "w": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "b": torch.ones(5)}
    safetensors_torch.save_file(tensors, tmp_path / "lib.safetensors", metadata={"format": "pt"})
    with StateDictReader(tmp_path / "lib.safetensors") as reader:
        for key, tensor in tensors.items():
            assert torch.equal(reader.get(key), tensor)


@pytest.mark.parametrize("case", sorted(CORRUPT_HEADERS))
def test_corrupt_header_is_refused_naming_the_file(tmp_path, case):
    header, size, phrase = CORRUPT_HEADERS[case]
    path = write_safetensors(tmp_path / f"{case}.safetensors", header, bytes(size))
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as err:
        StateDictReader(path)
    assert str(path) in str(err.value) and phrase in str(err.value)
    assert path.read_bytes() == before  # never modified


@pytest.mark.parametrize("case", sorted(CORRUPT_HEADERS))
def test_safetensors_library_refuses_the_same_files(tmp_path, case):
    """The cases above are the ones the reference reader refuses too (so valid files are never refused)."""
    safetensors = pytest.importorskip("safetensors")
    header, size, _ = CORRUPT_HEADERS[case]
    path = write_safetensors(tmp_path / f"{case}.safetensors", header, bytes(size))
    with pytest.raises(Exception):  # noqa: B017 - the library raises its own SafetensorError
        with safetensors.safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                handle.get_tensor(key)


# --- file modes as root: one thread without the capabilities that let root ignore them ---------------------

_CAPABILITY_VERSION_3 = 0x20080522  # _LINUX_CAPABILITY_VERSION_3 in linux/capability.h
_MODE_OVERRIDES = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_mode_overrides() -> str | None:
    """Drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this thread (capabilities are per thread, capset(2));
    from the permitted set too, as access(2) checks root against it. The reason when that fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return f"capget: {os.strerror(ctypes.get_errno())}"
    data[0].effective &= ~_MODE_OVERRIDES & 0xFFFFFFFF
    data[0].permitted &= ~_MODE_OVERRIDES & 0xFFFFFFFF
    if libc.capset(ctypes.byref(header), data) != 0:
        return f"capset: {os.strerror(ctypes.get_errno())}"
    with tempfile.TemporaryDirectory() as folder:  # the probe: a mode-000 file must now be unreadable
        probe = Path(folder) / "probe"
        probe.touch(mode=0)
        try:
            probe.read_bytes()
        except PermissionError:
            return None
    return "root still reads mode-000 files without CAP_DAC_OVERRIDE"


def with_file_modes_enforced(fn):
    """fn() with file modes applying as they do to any user. As root (here and in CI) it runs in a thread that
    drops the capabilities root ignores modes with; the process keeps them. Skips where that is impossible."""
    if sys.platform == "win32":
        pytest.skip("no POSIX file modes on Windows")
    if os.geteuid() != 0:
        return fn()
    if not sys.platform.startswith("linux"):
        pytest.skip("root ignores file modes, and only Linux lets one thread give that up")
    outcome = {}

    def body():
        outcome["skip"] = _drop_mode_overrides()
        if outcome["skip"] is None:
            try:
                outcome["value"] = fn()
            except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread
                outcome["error"] = err

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if outcome["skip"]:
        pytest.skip(f"cannot enforce file modes as root here ({outcome['skip']})")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def run_cli(argv, caplog) -> tuple[int, str]:
    caplog.clear()
    code = main(argv)
    return code, caplog.text


def test_info_on_an_empty_folder(tmp_path, caplog):
    code, text = run_cli(["info", str(tmp_path)], caplog)
    assert code == 2 and str(tmp_path) in text and "no weight files" in text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_info_on_a_fifo_does_not_hang(tmp_path, caplog):
    fifo = tmp_path / "weights.safetensors"
    os.mkfifo(fifo)
    code, text = run_cli(["info", str(fifo)], caplog)  # opening it would block: no writer ever comes
    assert code == 2 and f"info {fifo}: not a regular file" in text


def test_info_on_a_device(caplog):
    code, text = run_cli(["info", os.devnull], caplog)
    assert code == 2 and f"info {os.devnull}: not a regular file" in text


def test_fifo_is_refused_by_the_reader(tmp_path):
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=f"{fifo}: not a regular file"):
        open_weights(fifo)
    with pytest.raises(CheckpointError, match="no weight files"):  # a folder lists regular files only
        open_weights(tmp_path)


def test_info_on_an_unreadable_file(tmp_path, caplog):
    path = write_safetensors(tmp_path / "locked.safetensors", VALID, bytes(12))
    path.chmod(0)
    try:
        code, text = with_file_modes_enforced(lambda: run_cli(["info", str(path)], caplog))
    finally:
        path.chmod(0o644)
    assert code == 2 and str(path) in text and "permission denied" in text
    assert path.read_bytes() == write_safetensors(tmp_path / "copy", VALID, bytes(12)).read_bytes()


def test_loading_an_unreadable_file_names_it(tmp_path):
    path = write_safetensors(tmp_path / "locked.safetensors", VALID, bytes(12))
    path.chmod(0)
    try:
        with pytest.raises(CheckpointError, match=f"{path}: permission denied"):
            with_file_modes_enforced(lambda: open_weights(path))
    finally:
        path.chmod(0o644)


def test_info_on_a_corrupt_header_is_no_healthy_summary(tmp_path, caplog, capsys):
    path = write_safetensors(tmp_path / "bad.safetensors", {"x": f32([3], 0, 8)}, bytes(8))
    code, text = run_cli(["info", str(path)], caplog)
    assert code == 2 and str(path) in text and "corrupt safetensors header" in text
    assert capsys.readouterr().out == ""  # no summary printed


@pytest.mark.parametrize("outside", ["../x.safetensors", "sub/../../x.safetensors", "ABSOLUTE"])
def test_shard_index_pointing_outside_its_folder_is_refused(tmp_path, outside):
    folder = tmp_path / "model"
    folder.mkdir()
    target = write_safetensors(tmp_path / "x.safetensors", VALID, bytes(12))  # exists, so only the check refuses
    name = str(target) if outside == "ABSOLUTE" else outside
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": name}}))
    with pytest.raises(CheckpointError) as err:
        weight_files(folder)
    assert str(index) in str(err.value) and "in its folder" in str(err.value)
    assert target.read_bytes() == write_safetensors(tmp_path / "copy", VALID, bytes(12)).read_bytes()


def test_shard_index_inside_its_folder_still_works(tmp_path):
    write_safetensors(tmp_path / "part-1.safetensors", VALID, bytes(12))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "part-1.safetensors"}}))
    assert weight_files(tmp_path) == [tmp_path / "part-1.safetensors"]


BAD_JSON = [b"{not json", b"\xff\xfe\x00garbage"]


@pytest.mark.parametrize("raw", BAD_JSON)
def test_read_json_names_the_file(tmp_path, raw):
    path = tmp_path / "config.json"
    path.write_bytes(raw)
    with pytest.raises(CheckpointError, match=f"{path}: not valid JSON .*; re-download or fix it"):
        read_json(path)


def test_bad_scheduler_config_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    sched = tmp_path / "scheduler" / "scheduler_config.json"
    sched.parent.mkdir()
    sched.write_text('{"_class_name": ')
    with pytest.raises(CheckpointError, match=f"{sched}: not valid JSON"):
        PipelinePaths.resolve(tmp_path)


def test_bad_model_index_is_named(tmp_path, caplog):
    (tmp_path / "model_index.json").write_text("{")
    transformer = tmp_path / "transformer"
    transformer.mkdir()
    write_safetensors(transformer / "diffusion_pytorch_model.safetensors", VALID, bytes(12))
    code, text = run_cli(["info", str(transformer)], caplog)
    assert code == 2 and f"{tmp_path / 'model_index.json'}: not valid JSON" in text


def test_bad_vae_config_is_named(tmp_path):
    from pixart_core.vae.load import load_vae

    (tmp_path / "config.json").write_bytes(b"\xff\xfe")
    write_safetensors(tmp_path / "diffusion_pytorch_model.safetensors", VALID, bytes(12))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'config.json'}: not valid JSON"):
        load_vae(tmp_path)


def test_bad_t5_config_is_named(tmp_path):
    from pixart_core.t5.layout import resolve_source

    (tmp_path / "config.json").write_text("[")
    write_safetensors(tmp_path / "model.safetensors", VALID, bytes(12))
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'config.json'}: not valid JSON"):
        resolve_source(tmp_path)


@pytest.fixture()
def host(pack, monkeypatch):
    for name in ("folder_paths", "comfy.model_management"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    from pixart_atelier.nodes import host as host_module

    return host_module


def test_model_listing_survives_symlink_loops(host, tmp_path, monkeypatch):
    models = tmp_path / "diffusion_models"
    (models / "sub").mkdir(parents=True)
    (models / "sub" / "sigma.safetensors").write_bytes(b"")
    (models / "a.safetensors").write_bytes(b"")
    (models / "sub" / "loop").symlink_to(models, target_is_directory=True)  # sub/loop/sub/loop/...
    (models / "self").symlink_to(".", target_is_directory=True)
    (models / "alias").symlink_to(models / "sub", target_is_directory=True)
    monkeypatch.setenv("PIXART_ATELIER_MODELS", str(tmp_path))
    listed = host.list_models("diffusion_models")
    assert sorted(listed) == listed and len(listed) == len(set(listed))
    assert [os.path.basename(name) for name in listed].count("sigma.safetensors") == 1
    assert [os.path.basename(name) for name in listed].count("a.safetensors") == 1


def test_model_listing_follows_a_link_to_another_folder(host, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "linked.safetensors").write_bytes(b"")
    (tmp_path / "diffusion_models").mkdir()
    (tmp_path / "diffusion_models" / "shared").symlink_to(elsewhere, target_is_directory=True)
    monkeypatch.setenv("PIXART_ATELIER_MODELS", str(tmp_path))
    assert host.list_models("diffusion_models") == [os.path.join("shared", "linked.safetensors")]


def test_make_tiny_into_an_existing_file(tmp_path, caplog):
    target = tmp_path / "precious.bin"
    target.write_bytes(b"keep me")
    code, text = run_cli(["make-tiny", str(target)], caplog)
    assert code == 2 and f"make-tiny out_dir {target}: is an existing file" in text
    assert target.read_bytes() == b"keep me" and [p.name for p in tmp_path.iterdir()] == ["precious.bin"]


@pytest.mark.parametrize("where", ["UNDER_FILE", "/proc/pixart-tiny"])
def test_make_tiny_into_an_unwritable_place(tmp_path, caplog, where):
    (tmp_path / "file").write_bytes(b"x")
    out = str(tmp_path / "file" / "sub") if where == "UNDER_FILE" else where
    if where.startswith("/proc") and not os.path.isdir("/proc"):
        pytest.skip("no /proc on this platform")
    code, text = run_cli(["make-tiny", out], caplog)
    assert code == 2 and f"make-tiny out_dir {out}: cannot write there" in text
    assert not os.path.exists(out) and [p.name for p in tmp_path.iterdir()] == ["file"]


def test_make_tiny_into_a_read_only_folder(tmp_path, caplog):
    tmp_path.chmod(0o555)
    try:
        code, text = with_file_modes_enforced(lambda: run_cli(["make-tiny", str(tmp_path / "tiny")], caplog))
    finally:
        tmp_path.chmod(0o755)
    assert code == 2 and "cannot write there" in text and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out", ["", "  "])
def test_make_tiny_with_an_empty_name(tmp_path, caplog, monkeypatch, out):
    monkeypatch.chdir(tmp_path)  # an empty name would otherwise mean "here"
    code, text = run_cli(["make-tiny", out], caplog)
    assert code == 2 and "make-tiny out_dir is empty" in text and list(tmp_path.iterdir()) == []


def test_make_tiny_with_a_missing_tokenizer_folder(tmp_path, caplog):
    code, text = run_cli(["make-tiny", str(tmp_path / "tiny"), "--tokenizer", str(tmp_path / "nope")], caplog)
    assert code == 2 and f"--tokenizer {tmp_path / 'nope'}" in text and list(tmp_path.iterdir()) == []
