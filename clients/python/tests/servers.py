"""The real processes the tests talk to: the credit-sidecar binary and a private redis-server.

Both are started on ports the kernel picks (the sidecar's from ``--listen 127.0.0.1:0``, read
back from its ``serving`` log line) and are ready when they say so on stdout: nothing sleeps
waiting for them.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[3]
START_TIMEOUT = 60.0
"""Seconds a process may take to say it is ready before the test fails (a bound, not a wait)."""


def sidecar_binary() -> Path:
    return Path(os.environ.get("CREDIT_SIDECAR_BIN", REPO / "target" / "debug" / "credit-sidecar"))


def _clean_env() -> dict[str, str]:
    """The environment without settings a developer's shell may carry into the sidecar."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CREDIT_SIDECAR_") and key not in ("REDIS_URL", "DATABASE_URL")
    }


class _Output:
    """Reads a child's stdout on a thread (so the child never blocks on a full pipe) and lets the
    test wait, with a bound, for the first line that matches."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        assert process.stdout is not None
        self._thread = threading.Thread(target=self._pump, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, matches: Callable[[str], object]) -> object:
        """The first truthy ``matches(line)``; raises if the stream ends or the bound passes."""
        while True:
            try:
                line = self._queue.get(timeout=START_TIMEOUT)
            except queue.Empty:
                raise RuntimeError("no ready line within the bound:\n" + "".join(self.lines)) from None
            if line is None:
                raise RuntimeError("exited before it was ready:\n" + "".join(self.lines))
            found = matches(line)
            if found:
                return found


def _serving(line: str) -> dict[str, str] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    fields = record.get("fields", {}) if isinstance(record, dict) else {}
    return fields if fields.get("message") == "serving" else None


class Sidecar:
    """One credit-sidecar process; :meth:`kill` and :meth:`start` again restart it on the same
    ledger database (and Redis prefix), as a crash and a restart would."""

    def __init__(self, workdir: Path, args: Sequence[str]) -> None:
        self.workdir = workdir
        self.args = [
            str(sidecar_binary()),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--database-url",
            f"sqlite://{workdir}/ledger.db?mode=rwc",
            *args,
        ]
        self.process: subprocess.Popen[str] | None = None
        self.address = ""
        self.output: _Output | None = None

    def start(self) -> Sidecar:
        self.process = subprocess.Popen(
            self.args,
            cwd=self.workdir,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = _Output(self.process)
        serving = self.output.wait_for(_serving)
        assert isinstance(serving, dict)
        self.address = serving["grpc"]
        return self

    def pause(self) -> None:
        """SIGSTOP: the process stays connected but answers nothing (a hung sidecar)."""
        assert self.process is not None
        _stop(self.process)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: a crash, with no drain and no flush."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _stop(process: subprocess.Popen[str]) -> None:
    """SIGSTOP, returning once the process has stopped: the signal takes effect asynchronously,
    and a call sent in between would still be answered."""
    process.send_signal(signal.SIGSTOP)
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), status


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server on a free port: with no persistence, or, given ``durable_dir``,
    with an append-only file fsynced on every write there, so that :meth:`kill` and
    :meth:`restart` (same port) lose nothing it acknowledged (a crashed Redis coming back)."""

    def __init__(self, durable_dir: Path | None = None) -> None:
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.durable_dir = durable_dir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    def _spawn(self) -> _Output:
        persistence = ["--appendonly", "no"]
        if self.durable_dir is not None:
            persistence = ["--dir", str(self.durable_dir), "--appendonly", "yes", "--appendfsync", "always"]
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output = _Output(self.process)
        output.wait_for(lambda line: "Ready to accept connections" in line)
        return output

    def start(self) -> RedisServer:
        # redis-server cannot take port 0, so the port is picked here; a port someone took in the
        # meantime shows as a failed start, and another one is tried.
        for _ in range(5):
            self.port = free_port()
            try:
                self._spawn()
                return self
            except RuntimeError as error:
                if "Address already in use" not in str(error):
                    raise
        raise RuntimeError("no free port for redis-server")

    def kill(self) -> None:
        """SIGKILL: Redis is gone (connections refused) until :meth:`restart`."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def restart(self) -> RedisServer:
        """Starts it again on the same port (and, when durable, on what it had written)."""
        self._spawn()
        return self

    def pause(self) -> None:
        assert self.process is not None
        _stop(self.process)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.resume()
            self.process.terminate()
            self.process.wait(timeout=15)
