"""A real `runner serve` process on loopback, for attacks that need real sockets and a server whose
memory can be read (/proc/PID/status), and a small raw HTTP/1.1 client (h11) that sends exactly
the bytes a test means."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

from .conftest import KEY, ROWS

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    root: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    pid: int = field(init=False)

    def __post_init__(self) -> None:
        self.pid = self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def memory(self, key: str = "VmRSS") -> int:
        """The server's resident memory (VmRSS) or its peak (VmHWM), in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
        raise AssertionError(f"no {key} for pid {self.pid}")

    def reset_peak(self) -> None:
        """Restart VmHWM from the current RSS (Linux: write 5 to /proc/PID/clear_refs)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def make_project(root: Path) -> Path:
    (root / "jobs").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return root


def start_server(root: Path, *flags: str) -> Server:
    """`runner serve jobs` in `root` on a free loopback port, with `flags`."""
    env = {**os.environ, "RUNNER_API_KEY": KEY, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    log_path = root / f"serve-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "serve", "jobs", "--listen", "127.0.0.1:0", "--runs-dir", "runs", *flags],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"serving http://127\.0\.0\.1:(\d+)/", log_path.read_text(errors="replace"))
        if match:  # the port is bound; it answers once uvicorn listens
            try:
                socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=1).close()
                return Server(root, proc, log_path, int(match.group(1)))
            except OSError:
                pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"runner serve did not start:\n{log_path.read_text(errors='replace')}")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """One keep-alive connection speaking HTTP/1.1 through h11: any target, any header, any body."""

    def __init__(self, server: Server, timeout: float = 30) -> None:
        self.server, self.timeout = server, timeout
        self.sock: socket.socket | None = None
        self.conn = h11.Connection(h11.CLIENT)

    def _open(self) -> socket.socket:
        if self.sock is None or self.conn.our_state is not h11.IDLE:
            self.close()
            self.sock = socket.create_connection(("127.0.0.1", self.server.port), timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.conn = h11.Connection(h11.CLIENT)
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> Answer:
        sock = self._open()
        all_headers = [
            (b"host", f"127.0.0.1:{self.server.port}".encode()),
            *headers,
            (b"content-length", str(len(body)).encode()),
        ]
        try:
            out = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
            if body:
                out += self.conn.send(h11.Data(data=body))
            sock.sendall(out + self.conn.send(h11.EndOfMessage()))  # one write: no Nagle stall
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: its answer is still there to read
        response, chunks = None, []
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = sock.recv(1 << 16)
                except ConnectionResetError:
                    data = b""
                self.conn.receive_data(data)
                if not data and response is None:
                    raise ConnectionError("the server closed the connection without an answer")
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert response is not None
        answer = Answer(
            response.status_code,
            {k.decode().lower(): v.decode("latin-1") for k, v in response.headers},
            b"".join(chunks),
        )
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        else:
            self.close()
        return answer
