"""The frontend extension in web/: every .js file parses, and the pure helpers pass their `node --test` suite.

Both need Node.js and skip without it; the unit tests import web/*.js as ES modules, which needs a Node that
detects module syntax in plain .js files (>= 20.19 or >= 22.7). Parsing is checked with
`node --input-type=module --check` on stdin: `node --check FILE.js` does not report syntax errors in files that
Node 20 treats as ES modules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB_DIR = ROOT / "web"
NODE_TESTS = sorted((ROOT / "tests" / "web").glob("*.test.mjs"))
WEB_FILES = sorted(WEB_DIR.rglob("*.js"))


def _node_version(node: str) -> tuple[int, int]:
    out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    match = re.match(r"v(\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else (0, 0)


@pytest.fixture(scope="module")
def node() -> str:
    """Path of the Node.js executable; skip when there is none."""
    path = shutil.which("node")
    if path is None:
        pytest.skip("node (Node.js) is not installed")
    return path


@pytest.fixture(scope="module")
def esm_node(node) -> str:
    """A Node.js that detects ES-module syntax in .js files (to import web/*.js); skip otherwise."""
    major, minor = _node_version(node)
    if not ((major == 20 and minor >= 19) or (major == 22 and minor >= 7) or major >= 23):
        pytest.skip(f"node {major}.{minor} does not read ES-module syntax from .js files (needs >= 20.19 or >= 22.7)")
    return node


def test_web_directory_is_exported(pack):
    assert pack.WEB_DIRECTORY == "./web"
    assert (ROOT / pack.WEB_DIRECTORY).is_dir()
    names = {p.name for p in WEB_FILES}
    assert {"atelier.js", "detected_text.js"} <= names


def test_web_files_import_only_supported_frontend_modules():
    """No legacy /scripts/ui*.js imports (deprecated); app.js only through the documented relative path."""
    for path in WEB_FILES:
        source = path.read_text(encoding="utf-8")
        imports = re.findall(r"""^\s*import\b[^'"]*['"]([^'"]+)['"]""", source, flags=re.MULTILINE)
        for target in imports:
            assert not re.search(r"scripts/ui(\.js|/)", target), f"{path.name}: legacy import {target}"
            assert target.startswith(("./", "../../scripts/")), f"{path.name}: unexpected import {target}"
    helpers = (WEB_DIR / "detected_text.js").read_text(encoding="utf-8")
    assert "import " not in helpers, "detected_text.js must stay pure (no imports), for node --test"


@pytest.mark.parametrize("path", WEB_FILES, ids=lambda p: str(p.relative_to(WEB_DIR)))
def test_web_file_parses(node, path):
    result = subprocess.run([node, "--input-type=module", "--check"], input=path.read_text(encoding="utf-8"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{path.name} does not parse:\n{result.stderr}"


def test_node_unit_tests(esm_node):
    assert NODE_TESTS, "no tests/web/*.test.mjs files"
    result = subprocess.run([esm_node, "--test", *map(str, NODE_TESTS)], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    summary = "\n".join(line for line in result.stdout.splitlines() if line.startswith(("# ", "not ok")))
    assert result.returncode == 0, f"node --test failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
    assert re.search(r"^# fail 0$", result.stdout, flags=re.MULTILINE), summary
    assert re.search(r"^# pass [1-9]", result.stdout, flags=re.MULTILINE), summary
