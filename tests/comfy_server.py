"""Run a real ComfyUI server with this pack installed, for the real-host tests (stdlib only).

The server is ComfyUI's own `main.py --cpu`, run by the python of ComfyUI's venv, on a free loopback port,
with every writable folder (models, custom_nodes, input, output, temp, user, database) inside one temporary
base folder (`--base-directory`; ComfyUI 0.3.64 takes `custom_nodes` from there too). The pack is symlinked as
`<base>/custom_nodes/pixart_atelier`. Events of the `/ws` websocket (progress, executing, previews) are
collected by a minimal RFC 6455 client written here, because neither ComfyUI's requirements nor our test
venv ship a websocket library.

    with ComfyServer.start_from_env(tmp_path) as server:
        entry = run_workflow(server, api_prompt, timeout=120)
        images = saved_images(server, entry)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER_NAME = "pixart_atelier"
PROBE_NODES_FILE = Path(__file__).resolve().parent / "comfy_probe_nodes.py"
MODEL_KINDS = ("checkpoints", "diffusion_models", "text_encoders", "vae", "controlnet", "loras", "vae_approx")
HOST = "127.0.0.1"  # loopback only, ever
IMPORT_NAMES = {"pillow": "PIL", "opencv-python": "cv2", "psd-tools": "psd_tools"}  # distribution -> module


def pack_modules() -> list[str]:
    """The modules of requirements.txt, which a user installs into ComfyUI's Python (README, "In ComfyUI")."""
    lines = (PACK_ROOT / "requirements.txt").read_text().splitlines()
    names = [re.split(r"[<>=!~ ;\[]", line.strip(), maxsplit=1)[0].lower() for line in lines]
    return [IMPORT_NAMES.get(name, name) for name in names if name and not name.startswith("#")]


class ComfyServerError(RuntimeError):
    """The server failed to start, rejected a prompt, or a prompt failed; the message ends with the log tail."""


def comfyui_python(root: Path) -> str:
    """$COMFYUI_PYTHON, else <root>/../comfyui-venv/bin/python when present, else this interpreter."""
    if os.environ.get("COMFYUI_PYTHON"):
        return os.environ["COMFYUI_PYTHON"]
    venv_python = root.parent / "comfyui-venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class EventStream:
    """ComfyUI's /ws messages for one client id, read on a background thread (minimal RFC 6455 client)."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, port: int, client_id: str):
        self.messages: list[dict] = []  # JSON messages {"type": ..., "data": ...}
        self.previews: list[bytes] = []  # image bytes of binary PREVIEW_IMAGE frames
        self._changed = threading.Condition()
        self._sock = socket.create_connection((HOST, port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self._sock.sendall(
            f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self._buffer = b""
        while b"\r\n\r\n" not in self._buffer:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise ComfyServerError("websocket handshake: connection closed")
            self._buffer += chunk
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        if b" 101 " not in head.split(b"\r\n")[0] or accept.encode() not in head:
            raise ComfyServerError(f"websocket handshake refused: {head[:200]!r}")
        self._sock.settimeout(0.5)
        self._closed = False
        self._thread = threading.Thread(target=self._read_loop, name="comfy-ws", daemon=True)
        self._thread.start()

    def _read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self._closed:
                raise EOFError
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise EOFError
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x80 | opcode]) + (
            bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
        )
        self._sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _read_loop(self) -> None:
        fragments, message_opcode = b"", 0
        try:
            while not self._closed:
                first, second = self._read_exact(2)
                opcode, size = first & 0x0F, second & 0x7F
                if size == 126:
                    size = struct.unpack(">H", self._read_exact(2))[0]
                elif size == 127:
                    size = struct.unpack(">Q", self._read_exact(8))[0]
                mask = self._read_exact(4) if second & 0x80 else None
                payload = self._read_exact(size)
                if mask:
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                if opcode == 8:  # close
                    break
                if opcode == 9:  # ping
                    self._send(10, payload)
                    continue
                if opcode in (1, 2):
                    fragments, message_opcode = payload, opcode
                elif opcode == 0:
                    fragments += payload
                if first & 0x80 and opcode in (0, 1, 2):
                    self._deliver(message_opcode, fragments)
        except (EOFError, OSError):
            pass

    def _deliver(self, opcode: int, payload: bytes) -> None:
        with self._changed:
            if opcode == 1:
                self.messages.append(json.loads(payload))
            elif struct.unpack(">I", payload[:4])[0] == 1:  # PREVIEW_IMAGE: event, image type, image bytes
                self.previews.append(payload[8:])
            self._changed.notify_all()

    def of_prompt(self, prompt_id: str, kind: str | None = None) -> list[dict]:
        """Messages whose data names `prompt_id` (optionally only of type `kind`, e.g. "progress")."""
        with self._changed:
            return [
                m
                for m in self.messages
                if isinstance(m.get("data"), dict)
                and m["data"].get("prompt_id") == prompt_id
                and (kind is None or m["type"] == kind)
            ]

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Wait until `predicate()` is truthy (re-checked on each message); return its value or None."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (result := predicate()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._changed.wait(min(remaining, 0.5))
            return result

    def close(self) -> None:
        if not self._closed:
            try:
                self._send(8, struct.pack(">H", 1000))
            except OSError:
                pass
            self._closed = True
            self._thread.join(timeout=5)
            self._sock.close()


class ComfyServer:
    """One ComfyUI process (own process group) with this pack installed in a temporary base folder."""

    def __init__(self, comfyui_root: Path, base_dir: Path, python: str | None = None, cpu: bool = True,
                 extra_args: tuple[str, ...] = (), probe_nodes: bool = True):
        self.root = Path(comfyui_root).resolve()
        self.base = Path(base_dir).resolve()
        self.python = python or comfyui_python(self.root)
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = self.base / "comfyui.log"
        self.client_id = uuid.uuid4().hex
        self.events: EventStream | None = None
        self.process: subprocess.Popen | None = None
        self._prepare_base(probe_nodes)
        self.command = [
            self.python, "main.py", "--listen", HOST, "--port", str(self.port),
            "--base-directory", str(self.base), "--database-url", f"sqlite:///{self.base / 'db.sqlite'}",
            "--disable-auto-launch", "--disable-api-nodes", "--preview-method", "auto",
            *(["--cpu"] if cpu else []), *extra_args,
        ]  # fmt: skip

    @classmethod
    def start_from_env(cls, base_dir: Path, **kwargs) -> "ComfyServer":
        """Start a server for $COMFYUI_ROOT (and $COMFYUI_PYTHON); $COMFYUI_DEVICE=gpu drops --cpu."""
        root = os.environ.get("COMFYUI_ROOT")
        if not root:
            raise ComfyServerError("COMFYUI_ROOT is not set")
        kwargs.setdefault("cpu", os.environ.get("COMFYUI_DEVICE", "cpu") != "gpu")
        return cls(Path(root), base_dir, **kwargs).start()

    def _prepare_base(self, probe_nodes: bool) -> None:
        for sub in ("custom_nodes", "input", "output", "temp", "user"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        for kind in MODEL_KINDS:
            self.models_dir(kind)
        link = self.base / "custom_nodes" / PACK_FOLDER_NAME
        if not link.exists():
            link.symlink_to(PACK_ROOT, target_is_directory=True)
        probe = self.base / "custom_nodes" / PROBE_NODES_FILE.name
        if probe_nodes and not probe.exists():
            probe.symlink_to(PROBE_NODES_FILE)

    def models_dir(self, kind: str) -> Path:
        """<base>/models/<kind> (created): put test checkpoints here; ComfyUI re-lists folders on change."""
        folder = self.base / "models" / kind
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # ------------------------------------------------------------------------------------------ lifecycle

    def check_requirements(self) -> None:
        """Raise ComfyServerError naming the fix when ComfyUI's Python lacks a module of this pack's
        requirements.txt (a workflow would otherwise fail midway with an ImportError)."""
        probe = ("import importlib.util, sys; "
                 "print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))")
        result = subprocess.run([self.python, "-c", probe, *pack_modules()], capture_output=True, text=True,
                                timeout=60)
        missing = result.stdout.split()
        if result.returncode != 0 or missing:
            raise ComfyServerError(f"ComfyUI's Python {self.python} lacks {', '.join(missing) or 'a module'} of this "
                                   f"pack's requirements: run `{self.python} -m pip install -r "
                                   f"{PACK_ROOT / 'requirements.txt'}`{result.stderr[-500:]}")

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        """Launch `main.py` and wait until it answers HTTP; raise ComfyServerError (with log tail) otherwise."""
        self.check_requirements()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PIXART_ATELIER_MODELS", None)  # inside the host, folders come from ComfyUI
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise ComfyServerError(f"ComfyUI exited with code {self.process.returncode}{self.log_tail()}")
                try:
                    self.get("/system_stats", timeout=2)
                    break
                except (OSError, urllib.error.URLError):
                    if time.monotonic() > deadline:
                        raise ComfyServerError(f"ComfyUI not ready after {timeout:.0f} s{self.log_tail()}") from None
                    time.sleep(0.5)
            self.events = EventStream(self.port, self.client_id)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 15 s)."""
        if self.events is not None:
            self.events.close()
            self.events = None
        if self.process is None or self.process.poll() is not None:
            return
        for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> "ComfyServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        """The last `lines` of the server log, formatted to append to an error message."""
        return "\n--- ComfyUI log tail ---\n" + "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------------------------------- HTTP API

    def request(self, method: str, path: str, payload: Any = None, timeout: float = 30) -> Any:
        """JSON request to the server; returns decoded JSON (or None for an empty body)."""
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def get(self, path: str, timeout: float = 30) -> Any:
        return self.request("GET", path, timeout=timeout)

    def object_info(self) -> dict:
        return self.get("/object_info", timeout=120)

    def submit(self, prompt: dict) -> str:
        """Queue an API-format prompt (POST /prompt); returns its prompt id. Rejections raise with node errors."""
        try:
            answer = self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            raise ComfyServerError(f"prompt rejected ({error.code}): {detail}{self.log_tail(20)}") from None
        return answer["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.get(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout: float) -> dict:
        """Poll /history until the prompt finished (success, error or interrupted); return its history entry."""
        deadline = time.monotonic() + timeout
        while (entry := self.history(prompt_id)) is None or not entry.get("status", {}).get("status_str"):
            if self.process is not None and self.process.poll() is not None:
                raise ComfyServerError(f"ComfyUI died while running {prompt_id}{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ComfyServerError(f"prompt {prompt_id} still running after {timeout:.0f} s{self.log_tail()}")
            time.sleep(0.2)
        return entry

    def interrupt(self, prompt_id: str | None = None) -> None:
        """POST /interrupt (globally, or only if `prompt_id` is the running prompt)."""
        self.request("POST", "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def free(self, unload_models: bool = True) -> None:
        """POST /free: unload models (and drop cached outputs) after the current prompt."""
        self.request("POST", "/free", {"unload_models": unload_models, "free_memory": True})


# ----------------------------------------------------------------------------------- workflows and outputs


def status_messages(entry: dict) -> dict[str, dict]:
    """History status messages by type ("execution_success", "execution_error", "execution_interrupted", ...)."""
    return {kind: data for kind, data in entry.get("status", {}).get("messages", [])}


def run_workflow(server: ComfyServer, api_json: dict, timeout: float = 300) -> dict:
    """Run an API-format workflow to the end; return its history entry or raise ComfyServerError."""
    prompt_id = server.submit(api_json)
    entry = server.wait(prompt_id, timeout)
    entry["prompt_id"] = prompt_id
    if entry["status"]["status_str"] != "success":
        messages = status_messages(entry)
        error = messages.get("execution_error") or messages.get("execution_interrupted") or entry["status"]
        if isinstance(error, dict) and "traceback" in error:
            error = {**error, "traceback": "".join(error["traceback"])}
        raise ComfyServerError(f"workflow failed: {json.dumps(error, indent=1)[:4000]}{server.log_tail(30)}")
    return entry


def saved_images(server: ComfyServer, entry: dict, node_id: str | None = None) -> list[Path]:
    """Files of the images the workflow's output nodes saved (SaveImage -> output/, PreviewImage -> temp/)."""
    paths = []
    for output_node, output in entry.get("outputs", {}).items():
        if node_id is not None and output_node != str(node_id):
            continue
        for image in output.get("images", []):
            folder = server.base / image.get("type", "output")
            paths.append(folder / image.get("subfolder", "") / image["filename"])
    return paths


def read_image(path: Path):
    """A saved image as a numpy array [H, W, C] of uint8 (C = 3 or 4)."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")).copy()
