"""The durable local spool of usage events, and the background sender that empties it.

Every event is written to a SQLite file before anything is sent. A sender thread reads the
oldest events in order, posts them to `POST /v1/events` as one batch, and deletes them only when
meter answered 202 (events meter refused one by one, with a per-event error, move to the
`rejected` table, where they stay for a person to read). When meter cannot be reached the events
stay, and the sender retries with backoff (0.5 s doubling to 30 s); a process started later on the
same file sends what an earlier one left. Events keep their `source` and `id`, and meter settles
an event once per `source` and `id`, so an event sent twice (its acknowledgement lost, or two
processes replaying one file) is still counted once.

The file is opened in WAL mode with `synchronous=NORMAL`: a committed event survives the crash
of the process; pass `synchronous="FULL"` to survive the loss of power too (one fsync per event).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Literal

import httpx

from meter_client.events import batch_request, parse, transport_error
from meter_client.types import MeterError

log = logging.getLogger("meter_client")

MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 900 * 1024
"""Below the API's 1 MiB per batch, leaving room for the brackets and commas."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL,
    spooled_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    body BLOB NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    rejected_at REAL NOT NULL
);
"""


class Spool:
    """Events waiting to be acknowledged, in the order they were appended (thread-safe)."""

    def __init__(
        self, path: str | Path, *, synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    ) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, check_same_thread=False, timeout=30
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)

    def append(self, body: bytes) -> int:
        """Store one encoded event; returns its sequence number."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO events (body, spooled_at) VALUES (?, ?)", (body, time.time())
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def peek(
        self, limit: int = MAX_BATCH_EVENTS, max_bytes: int = MAX_BATCH_BYTES
    ) -> list[tuple[int, bytes]]:
        """The oldest events, at most `limit` of them and about `max_bytes` (at least one)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM events ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        out: list[tuple[int, bytes]] = []
        size = 0
        for seq, body in rows:
            size += len(body) + 1
            if out and size > max_bytes:
                break
            out.append((seq, bytes(body)))
        return out

    def ack(self, seqs: list[int]) -> None:
        """Forget acknowledged events."""
        with self._lock:
            self._db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in seqs])

    def reject(self, seq: int, code: str, message: str) -> None:
        """Move an event meter refused to the `rejected` table."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO rejected (seq, body, code, message, rejected_at) "
                    "SELECT seq, body, ?, ?, ? FROM events WHERE seq = ?",
                    (code, message, time.time(), seq),
                )
                self._db.execute("DELETE FROM events WHERE seq = ?", (seq,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def pending(self) -> int:
        """How many events wait to be acknowledged."""
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM events").fetchone()
        return int(count)

    def rejected(self) -> list[tuple[bytes, str, str]]:
        """Events meter refused: (event, error code, message), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body, code, message FROM rejected ORDER BY seq"
            ).fetchall()
        return [(bytes(body), code, message) for body, code, message in rows]

    def close(self) -> None:
        """Close the file (events not yet acknowledged stay in it)."""
        with self._lock:
            self._db.close()


class Sender:
    """A daemon thread posting the spool's events in batches, oldest first."""

    def __init__(
        self,
        spool: Spool,
        http: httpx.Client,
        *,
        batch_size: int = 100,
        interval_s: float = 0.2,
        timeout_s: float = 5.0,
    ) -> None:
        self.spool = spool
        self._http = http
        self._batch_size = min(batch_size, MAX_BATCH_EVENTS)
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._appended = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="meter-client-sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Send now rather than at the next interval."""
        self._wake.set()

    def wake_if_full(self) -> None:
        """Count one appended event; wake the thread once a batch is waiting."""
        self._appended += 1
        if self._appended >= self._batch_size:
            self._appended = 0
            self._wake.set()

    def flush(self, timeout_s: float) -> bool:
        """Wait until the spool is empty, at most `timeout_s`; True if it is."""
        deadline = time.monotonic() + timeout_s
        while self.spool.pending():
            left = deadline - time.monotonic()
            if left <= 0 or not self._thread.is_alive():
                return False
            self._wake.set()
            with self._idle:
                self._idle.wait(min(left, 0.05))
        return True

    def stop(self) -> None:
        """Stop the thread after the request in flight; unsent events stay in the spool."""
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            if not self.spool.pending():
                self._wake.wait(self._interval_s)
                self._wake.clear()
                continue
            try:
                sent = self._send_one_batch()
            except MeterError as exc:
                log.warning("meter-client: events stay spooled (%s); retry in %.1f s", exc, backoff)
                self._stop.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            with self._idle:
                self._idle.notify_all()
            if sent < self._batch_size:
                self._wake.wait(self._interval_s)
                self._wake.clear()

    def _send_one_batch(self) -> int:
        batch = self.spool.peek(self._batch_size)
        request = batch_request([body for _, body in batch])
        try:
            answer = self._http.request(
                request.method,
                request.path,
                content=request.body,
                headers={"content-type": request.content_type},
                timeout=self._timeout_s,
            )
        except httpx.TransportError as exc:
            raise transport_error(exc) from exc
        body = parse(answer.status_code, answer.content, answer.headers.get("x-request-id"))
        results = body.get("results", []) if isinstance(body, dict) else []
        acked = [seq for seq, _ in batch]
        for result in results:
            if not result.get("accepted"):
                seq = batch[int(result["index"])][0]
                error = result.get("error") or {}
                self.spool.reject(seq, str(error.get("code")), str(error.get("message")))
                acked.remove(seq)
                log.error("meter-client: meter refused an event: %s", error)
        self.spool.ack(acked)
        return len(batch)
