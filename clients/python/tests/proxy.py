"""A TCP relay between a client and the sidecar that can lose the sidecar's answers.

This is how a test makes the in-doubt case happen for sure: the request reaches the real sidecar
and is applied, but the answer never reaches the client, whose attempt then fails on its deadline.
Only a retry with the same request id can then get the answer without applying the change twice.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class LossyProxy:
    def __init__(self, target: str) -> None:
        self._target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._losing = threading.Event()
        self.lost = threading.Event()
        """Set once an answer was thrown away: the sidecar had answered, so it had decided."""
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_answers(self) -> None:
        """From now on, drop every byte the sidecar sends."""
        self.lost.clear()
        self._losing.set()

    def heal(self, target: str | None = None) -> None:
        """Relay answers again (to ``target`` if the sidecar moved): the connections whose answers
        were dropped are cut, since their HTTP/2 state is lost, and the client connects anew."""
        with self._lock:
            if target is not None:
                self._target = target
            self._losing.clear()
            doomed = list(self._sockets)
        for sock in doomed:
            _close(sock)

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        self.heal()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                host, port = self._target.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)))
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self._losing.is_set():
                    self.lost.set()
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                _close(sock)
            with self._lock:
                self._sockets.difference_update((source, sink))


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
