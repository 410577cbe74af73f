"""gunicorn's threaded worker, made safe against slow clients: a thread gets a connection only once the
request's head (request line and headers) is in.

gunicorn's ``gthread`` hands a connection to a thread as soon as a byte can be read (after 5 s of silence
it parks it again); the thread then reads the rest of the head with a blocking socket, without a time limit.
A few clients that send a request line and never finish the headers hold every thread, and ``/health``
waits.  :class:`HeadFirstWorker` reads heads in the worker's event loop instead: a connection whose head is
not complete ``client_timeout`` seconds after it was accepted (or after its kept-alive connection woke up)
is closed without costing a thread.  In the thread, a body read that waits longer than ``client_timeout``
ends the body, as if the client had gone (the request fails with a 400 rather than holding the thread).

TLS and HTTP/2 connections (``certfile``, ``http_protocols = "h2"``) are left to gthread's own handling;
terminate TLS at a reverse proxy (docs/serving.md).
"""
from __future__ import annotations

import selectors
import socket
import time
from collections import deque
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

HEAD_END = (b"\r\n\r\n", b"\n\n")
#: the largest head read before the parser is left to refuse it (gunicorn's limits are lower by default)
MAX_HEAD = 1 << 20


class _PatientSocket:
    """The connection's socket as the request parser reads it: a read that waits longer than ``timeout``
    returns no data (the end of the body) instead of holding the thread, and the connection reads nothing
    more (it closes after the response)."""

    def __init__(self, sock: socket.socket, timeout: float):
        self._sock = sock
        self._timeout = timeout

    def recv(self, size: int) -> bytes:
        blocking = self._sock.gettimeout() is None  # gunicorn bounds its own body drains with a timeout
        if blocking:
            self._sock.settimeout(self._timeout)
        try:
            return self._sock.recv(size)
        except TimeoutError:
            try:
                self._sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            return b""
        finally:
            if blocking:
                self._sock.settimeout(None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class HeadFirstWorker(ThreadWorker):
    """``gthread`` whose threads only ever wait for a request's body, never for its head (see the module)."""

    client_timeout: float = 30.0

    @classmethod
    def configured(cls, client_timeout: float) -> type[HeadFirstWorker]:
        """This worker class with its own ``client_timeout`` (seconds), for ``worker_class`` in gunicorn's config."""
        return type(cls.__name__, (cls,), {"client_timeout": float(client_timeout), "__module__": cls.__module__})

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.heading: deque[Any] = deque()  # connections reading their head, oldest deadline first
        self.head_first = not (self.cfg.is_ssl or "h2" in (getattr(self.cfg, "http_protocols", None) or ()))

    # --- the event loop ------------------------------------------------------------------------------------------
    def enqueue_req(self, conn: Any) -> None:
        """A connection with a new request coming: to a thread if its head is in, else wait for it here."""
        if not self.head_first or getattr(conn, "head", None) is not None:
            super().enqueue_req(conn)
            return
        pending = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.head_buf = bytearray(pending)
        if self._head_complete(conn.head_buf):
            self._to_thread(conn)
            return
        conn.sock.setblocking(False)
        conn.head_deadline = time.monotonic() + self.client_timeout
        self.heading.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_head_data, conn))

    def _head_complete(self, buf: bytearray) -> bool:
        return any(end in buf for end in HEAD_END) or len(buf) > MAX_HEAD

    def _on_head_data(self, conn: Any, _sock: Any) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client left before finishing its head
            self._stop_heading(conn)
            self.nr_conns -= 1
            conn.close()
            return
        conn.head_buf += data
        if self._head_complete(conn.head_buf):
            self._stop_heading(conn)
            self._to_thread(conn)

    def _stop_heading(self, conn: Any) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        try:
            self.heading.remove(conn)
        except ValueError:
            pass

    def _to_thread(self, conn: Any) -> None:
        conn.head = bytes(conn.head_buf)
        conn.head_buf = None
        conn.data_ready = True  # no waiting for a first byte in the thread
        super().enqueue_req(conn)

    def murder_pending(self) -> None:
        """gthread's clean-up of parked connections, and of those whose head is late."""
        super().murder_pending()
        now = time.monotonic() if self.alive else float("inf")  # a stopping worker reads no new requests
        while self.heading and self.heading[0].head_deadline <= now:
            conn = self.heading.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass
            self.nr_conns -= 1
            conn.close()

    # --- a thread --------------------------------------------------------------------------------------------------
    def handle(self, conn: Any) -> Any:
        head = getattr(conn, "head", None)
        if head is None:
            return super().handle(conn)
        conn.head = None
        try:
            conn.sock.setblocking(True)
            conn.init()  # the parser, on the first request of a connection
            conn.parser.unreader.unread(head)
            if not isinstance(conn.parser.unreader.sock, _PatientSocket):
                conn.parser.unreader.sock = _PatientSocket(conn.sock, self.client_timeout)
        except OSError:
            return False
        return super().handle(conn)
