"""`python -m pixart_core layers`: a PSD / ORA / folder from a layout file with a progress bar per phase; usage
errors as one line, exit code 2 and nothing written."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from pixart_core.__main__ import main
from pixart_core.layers import LayerStack

LAYOUT = {"width": 96, "height": 64, "prompt": "a fox and a tree", "background": {"prompt": "a meadow"},
          "layers": [{"name": "tree", "prompt": "a green tree", "box": [8, 0, 56, 64]},
                     {"name": "fox", "prompt": "a red fox", "box": [40, 24, 88, 64]}]}


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def layout_file(tmp_path):
    path = tmp_path / "layout.json"
    path.write_text(json.dumps(LAYOUT), encoding="utf-8")
    return path


def run(tiny_suite, layout, out, *extra) -> int:
    return main(["layers", "--model", str(tiny_suite / "pipelines" / "sigma-256"), "--layout", str(layout),
                 "--out", str(out), "--steps", "2", "--threads", "1", *extra])


@pytest.mark.parametrize("name", ["poster.psd", "poster.ora", "poster"])
def test_writes_a_stack_file(tiny_suite, layout_file, tmp_path, capsys, name):
    out = tmp_path / name
    assert run(tiny_suite, layout_file, out, "--seed", "3") == 0
    stack = LayerStack.load(out)
    assert [layer.name for layer in stack.layers] == ["background", "tree", "fox"]
    assert (stack.width, stack.height) == (96, 64)
    err = capsys.readouterr().err
    if "composite" in err:  # tqdm draws only where stderr is a terminal or captured text
        assert "background" in err


@pytest.mark.parametrize("change, flag, message", [
    ({"width": 100}, None, "layout.width: 100 is not a multiple of 16"),
    ({"layers": [{"name": "a", "box": [0, 0, 8, 8]}]}, None, "prompt: missing"),
    (None, "bad-json", "invalid JSON"),
    (None, "out.png", "unknown extension '.png'"),
    (None, "missing-layout", "file not found"),
])
def test_usage_errors_are_one_line_exit_2_and_write_nothing(tiny_suite, tmp_path, caplog, change, flag, message):
    layout = tmp_path / "layout.json"
    text = json.dumps({**LAYOUT, **(change or {})})
    layout.write_text("{broken" if flag == "bad-json" else text, encoding="utf-8")
    if flag == "missing-layout":
        layout = tmp_path / "nowhere.json"
    out = tmp_path / ("out.png" if flag == "out.png" else "poster.psd")
    before = sorted(path.name for path in tmp_path.iterdir())
    with caplog.at_level(logging.ERROR, logger="pixart_core"):
        assert run(tiny_suite, layout, out) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and message in errors[0], errors
    assert sorted(path.name for path in tmp_path.iterdir()) == before
