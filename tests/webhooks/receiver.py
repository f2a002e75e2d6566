"""A real HTTP receiver for webhooks: `http.server` in a thread, which can be taken down and
brought back on the same port, and told to answer with an error status."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    """`time.time()` when the request was read."""

    @property
    def message_id(self) -> str:
        return self.headers["webhook-id"]

    def json(self) -> dict[str, object]:
        value: dict[str, object] = orjson.loads(self.body)
        return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True


class Receiver:
    """Records every request; answers `status` (204 by default) after `delay_s`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 204
        self.delay_s = 0.0
        """How long it takes to answer each request."""
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

            def do_POST(self) -> None:
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)  # this request's own thread
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    status = receiver.status
                    if 200 <= status < 300:
                        receiver.received.append(Received(headers, body, time.time()))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = Server(("127.0.0.1", self.port), Handler)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Take the receiver down: connections to its port are refused until `start()`."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    async def wait_for(self, count: int, timeout_s: float = 60.0) -> list[Received]:
        """Wait until at least `count` requests were received (readiness polling)."""
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.snapshot()
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"received {len(got)} of {count} webhooks")
            await asyncio.sleep(0.05)
