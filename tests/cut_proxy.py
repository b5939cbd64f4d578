"""A TCP proxy whose link can be cut and restored: a database or Redis that goes down and comes back, for a
gateway that connects through it (tests only)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CutProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = False
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            if self.down:
                client.close()  # refused, as near as a listener can
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            _close(end)

    def cut(self) -> None:
        """Every open connection is reset and new ones are closed at once, until `restore`."""
        self.down = True
        with self._lock:
            for end in self._open:
                _close(end)
            self._open.clear()

    def restore(self) -> None:
        self.down = False


def _close(end: socket.socket) -> None:
    with contextlib.suppress(OSError):
        end.shutdown(socket.SHUT_RDWR)  # wakes the pump reading it
    end.close()


@contextmanager
def cut_proxy(host: str, port: int) -> Iterator[CutProxy]:
    proxy = CutProxy((host, port))
    thread = threading.Thread(target=proxy.serve, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.cut()
        proxy.listener.close()
