"""A real ComfyUI server for the integration tests: headless, CPU, on 127.0.0.1 and a free port, with this pack in
its custom_nodes, its own input/output/model folders in a temporary directory, stopped by its PID at the end.

Set ``COMFYUI_DIR`` to a ComfyUI checkout (and ``COMFYUI_PYTHON`` to a Python with ComfyUI's and this project's
requirements; default: the Python running pytest). Without ``COMFYUI_DIR`` every test here is skipped. Set
``VHS_DIR`` to a ComfyUI-VideoHelperSuite checkout (its requirements installed in that Python) to link it into
custom_nodes too, for the interop tests; without it (and without VideoHelperSuite already installed) they skip.
Set ``COMFYUI_FRONTEND=1`` to serve the frontend installed with ComfyUI (for test_frontend.py, which also needs
``CHROMIUM`` and playwright).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WebSocket:
    """The smallest client ComfyUI's /ws needs (RFC 6455: unfragmented text and binary frames, ping, close)."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 120.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("websocket closed")
            data += chunk
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        header += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self, timeout: float) -> tuple[str, object]:
        """The next message: ("json", dict) or ("binary", bytes)."""
        self.sock.settimeout(timeout)
        while True:
            first, second = self._exact(2)
            opcode, n = first & 0x0F, second & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            mask = self._exact(4) if second & 0x80 else None
            payload = self._exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 1:
                return "json", json.loads(payload)
            if opcode == 2:
                return "binary", payload
            if opcode == 8:
                raise ConnectionError("websocket closed by the server")
            if opcode == 9:
                self._send(10, payload)

    def close(self) -> None:
        try:
            self._send(8, b"")
        finally:
            self.sock.close()


@dataclass
class Run:
    """What one prompt did, from the websocket and /history."""

    prompt_id: str
    status: str = ""  # "success", "error" or "interrupted"
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    progress: dict[str, list[int]] = field(default_factory=dict)  # node id -> values seen
    previews: int = 0
    error: dict | None = None
    outputs: dict = field(default_factory=dict)


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    input_dir: Path
    output_dir: Path
    models_dir: Path
    pack_name: str
    log_path: Path

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            body = response.read()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(data or {}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST {path}: HTTP {exc.code}: {exc.read()[:2000]!r}") from exc
        return json.loads(body) if body.strip() else {}

    def connect(self) -> tuple[WebSocket, str]:
        client_id = uuid.uuid4().hex
        return WebSocket("127.0.0.1", self.port, f"/ws?clientId={client_id}"), client_id

    def queue(self, prompt: dict, client_id: str) -> str:
        answer = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
        assert answer.get("node_errors") == {}, answer.get("node_errors")  # 200 even when branches fail
        return answer["prompt_id"]

    def follow(self, ws: WebSocket, prompt_id: str, *, timeout: float = 600.0, on_message=None) -> Run:
        """Read messages until `prompt_id` ends; `on_message(run, kind, data)` may act on the way."""
        run = Run(prompt_id)
        deadline = time.monotonic() + timeout
        while not run.status:
            if time.monotonic() > deadline:
                raise AssertionError(f"prompt {prompt_id} still running after {timeout} s; log: {self.log_tail()}")
            kind, message = ws.receive(timeout=max(1.0, deadline - time.monotonic()))
            if kind == "binary":
                run.previews += 1
            else:
                data = message.get("data", {})
                if data.get("prompt_id") not in (None, prompt_id):
                    continue
                kind = message["type"]
                if kind == "executing" and data.get("node") is not None:
                    run.executed.append(str(data["node"]))
                elif kind == "execution_cached":
                    run.cached += [str(n) for n in data.get("nodes", [])]
                elif kind == "progress":
                    run.progress.setdefault(str(data["node"]), []).append(int(data["value"]))
                elif kind == "execution_success":
                    run.status = "success"
                elif kind == "execution_error":
                    run.status, run.error = "error", data
                elif kind == "execution_interrupted":
                    run.status = "interrupted"
            if on_message is not None:
                on_message(run, kind, message)
        while run.status == "success" and not run.outputs:  # history is written just after the success message
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history:
                run.outputs = history[prompt_id]["outputs"] or {"": {}}
            elif time.monotonic() > deadline:
                raise AssertionError(f"prompt {prompt_id} succeeded but never reached /history")
            else:
                time.sleep(0.2)
        return run

    def output_files(self, run: Run, node_id: str) -> list[Path]:
        files = []
        for items in run.outputs.get(node_id, {}).values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    files.append(self.output_dir / item.get("subfolder", "") / item["filename"])
        return files

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _link_pack(custom_nodes: Path, pack: Path, prefix: str) -> tuple[str, Path | None]:
    """The custom_nodes entry that is the folder `pack`, creating a symlink when there is none (returned to remove)."""
    for entry in sorted(custom_nodes.iterdir()):
        if entry.is_dir() and entry.resolve() == pack:
            return entry.name, None
    link = custom_nodes / f"{prefix}_itest_{os.getpid()}"
    link.symlink_to(pack, target_is_directory=True)
    return link.name, link


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> Server:
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        pytest.skip("COMFYUI_DIR is not set: point it to a ComfyUI checkout to run the integration tests")
    comfy_dir = Path(comfy_dir).resolve()
    if not (comfy_dir / "main.py").is_file():
        pytest.fail(f"COMFYUI_DIR={comfy_dir} has no main.py; point it to a ComfyUI checkout")
    python = os.environ.get("COMFYUI_PYTHON") or sys.executable
    base = tmp_path_factory.mktemp("comfyui")
    dirs = {name: base / name for name in ("input", "output", "temp", "user", "frontend", "models")}
    for path in dirs.values():
        path.mkdir()
    # our folders, and ComfyUI's own that the Model Loader picks Wan single files from
    subfolders = ("diffusers", "directanimator", "diffusion_models", "vae", "clip_vision")
    for sub in subfolders:
        (dirs["models"] / sub).mkdir()
    paths_yaml = base / "extra_model_paths.yaml"
    paths_yaml.write_text(f"directanimator_tests:\n    base_path: {dirs['models']}\n"
                          + "".join(f"    {sub}: {sub}/\n" for sub in subfolders))
    vhs_dir = os.environ.get("VHS_DIR")
    if vhs_dir and not (Path(vhs_dir) / "videohelpersuite").is_dir():
        pytest.fail(f"VHS_DIR={vhs_dir} is not a ComfyUI-VideoHelperSuite checkout (no videohelpersuite/ in it)")
    pack_name, created_link = _link_pack(comfy_dir / "custom_nodes", ROOT, "directanimator")
    links, process = [created_link], None
    try:  # from here on the links are removed and the server stopped whatever happens
        if vhs_dir:
            links.append(_link_pack(comfy_dir / "custom_nodes", Path(vhs_dir).resolve(), "videohelpersuite")[1])
        port = _free_port()
        log_path = base / "comfyui.log"
        # no frontend unless a browser test asks for the one installed with ComfyUI (test_frontend.py)
        frontend = [] if os.environ.get("COMFYUI_FRONTEND") else ["--front-end-root", str(dirs["frontend"])]
        command = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                   *frontend, "--input-directory", str(dirs["input"]),
                   "--output-directory", str(dirs["output"]), "--temp-directory", str(dirs["temp"]),
                   "--user-directory", str(dirs["user"]), "--extra-model-paths-config", str(paths_yaml)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        with log_path.open("w") as log:
            process = subprocess.Popen(command, cwd=comfy_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
        server = Server(f"http://127.0.0.1:{port}", port, process, dirs["input"], dirs["output"], dirs["models"],
                        pack_name, log_path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with {process.returncode} while starting:\n{server.log_tail()}")
            try:
                server.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"ComfyUI did not answer within {START_TIMEOUT_S} s:\n{server.log_tail()}")
                time.sleep(1.0)
        yield server
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        for link in links:
            if link is not None and link.is_symlink():
                link.unlink()


@pytest.fixture(scope="module")
def media(comfy):
    """The files the workflows name, in the server's input folder, cut from the real footage."""
    from tests.helpers import REAL_DATA
    from tests.integration.shipped import CLIP_FPS, CLIP_FRAMES, CLIP_SIZE, build

    if not REAL_DATA.is_dir():
        pytest.skip(f"real footage not found at {REAL_DATA} (shared/data/real): the cue nodes need real people")
    from directanimator.video import read_image, read_video, write_image, write_video

    clip = read_video(REAL_DATA / "dance_1080x1920_24fps.mp4", start=48, stride=2, max_frames=CLIP_FRAMES,
                      size=CLIP_SIZE)
    write_video(comfy.input_dir / build.DRIVING, clip.frames, fps=CLIP_FPS)
    write_image(comfy.input_dir / build.REFERENCE, read_image(REAL_DATA / "ref_anime_character.jpg",
                                                              size=(448, 256)))
    return clip
