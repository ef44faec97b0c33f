"""A TCP listener on 127.0.0.1 for tests that play a peer: a proxy, a fake GCS, a URL nothing may reach."""

from __future__ import annotations

import contextlib
import socket
import threading


class Listener:
    """Accepts on a free port of 127.0.0.1 in a thread of its own, handing each connection to :meth:`serve`.

    Subclasses set what :meth:`serve` records before calling ``super().__init__()``,
    which starts accepting.  By default each connection's first bytes (up to
    64 KiB within 2 s, ``b""`` if none) are kept in :attr:`received`.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.serve(connection)

    def serve(self, connection: socket.socket) -> None:
        """Keep what the peer sends first, then hang up."""
        with connection:
            connection.settimeout(2.0)
            try:
                self.received.append(connection.recv(65536))
            except OSError:
                self.received.append(b"")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(), which a close() alone does not
        self.sock.close()
