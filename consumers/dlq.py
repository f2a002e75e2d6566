"""The dead-letter topic: what cannot settle, kept with its original bytes and the reason.

A dead letter carries the record's original key, value and headers, plus these headers:

- `meter-reason`: a stable code (`invalid_json`, `unknown_member`, ...);
- `meter-message`: a human-readable explanation;
- `meter-source-topic`, `meter-source-partition`, `meter-source-offset`: where it was read;
- `meter-dead-at`: epoch ms when it was dead-lettered.

A record the producer refuses as it is (larger than a request may be, headers it cannot encode:
anything it rejects for the record itself rather than for the connection) is dead-lettered
truncated instead, so that one record never stalls its partition: the first `PREFIX_BYTES` of
its value, the first `KEY_PREFIX_BYTES` of its key, none of its own headers, the reason
`too_large` (or `unsendable`), and these headers besides the ones above:

- `meter-truncated`: `1`;
- `meter-original-reason`: the reason it was dead-lettered for (`event_too_large`, ...);
- `meter-original-size`, `meter-original-key-size`, `meter-original-headers-size`: bytes of
  its value, key and headers (names and values).

Only transient failures (connection, timeout, leader not available ...) are raised, and the
consumer retries them.

`replay` re-produces dead letters to the usage topic (all, or those with given reasons), e.g.
after the admin created a missing member. Replaying is safe to repeat: settling is idempotent by
event key, and what still cannot settle comes back to the dead-letter topic. Truncated letters
cannot be replayed: `replay` skips and counts them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    CorruptRecordException,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from meter import kafka
from meter.settings import Settings

if TYPE_CHECKING:
    from meter.cli import Handler

log = structlog.get_logger("consumers.dlq")

REASON = "meter-reason"
MESSAGE = "meter-message"
SOURCE_TOPIC = "meter-source-topic"
SOURCE_PARTITION = "meter-source-partition"
SOURCE_OFFSET = "meter-source-offset"
DEAD_AT = "meter-dead-at"
REPLAYED_FROM = "meter-replayed-from"
"""Set on a replayed record: `<dlq topic>/<partition>/<offset>` it was copied from."""
TRUNCATED = "meter-truncated"
ORIGINAL_REASON = "meter-original-reason"
ORIGINAL_SIZE = "meter-original-size"
ORIGINAL_KEY_SIZE = "meter-original-key-size"
ORIGINAL_HEADERS_SIZE = "meter-original-headers-size"

_OWN_HEADERS = frozenset(
    {
        REASON,
        MESSAGE,
        SOURCE_TOPIC,
        SOURCE_PARTITION,
        SOURCE_OFFSET,
        DEAD_AT,
        TRUNCATED,
        ORIGINAL_REASON,
        ORIGINAL_SIZE,
        ORIGINAL_KEY_SIZE,
        ORIGINAL_HEADERS_SIZE,
    }
)

PREFIX_BYTES = 16 * 1024
"""How much of a refused record's value its truncated dead letter keeps."""
KEY_PREFIX_BYTES = 256
"""How much of a refused record's key its truncated dead letter keeps."""

TOO_LARGE = "too_large"
"""Reason of a truncated letter whose record was too large to dead-letter as it is."""
UNSENDABLE = "unsendable"
"""Reason of a truncated letter whose record the producer refused for another reason."""

_TOO_LARGE_ERRORS = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
REFUSED_RECORD: tuple[type[BaseException], ...] = (
    *_TOO_LARGE_ERRORS,
    CorruptRecordException,
    ValueError,
    TypeError,
)
"""What the producer raises for the record itself (never for the connection): sending it again
cannot help."""

Headers = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record that cannot settle, and why."""

    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]
    topic: str
    partition: int
    offset: int
    reason: str
    message: str

    def dlq_headers(self, now_ms: int) -> Headers:
        kept = [(k, v) for k, v in self.headers if k not in _OWN_HEADERS]
        return [
            *kept,
            (REASON, self.reason.encode()),
            (MESSAGE, self.message.encode()[:1024]),
            (SOURCE_TOPIC, self.topic.encode()),
            (SOURCE_PARTITION, str(self.partition).encode()),
            (SOURCE_OFFSET, str(self.offset).encode()),
            (DEAD_AT, str(now_ms).encode()),
        ]

    def truncated(self, now_ms: int, error: BaseException) -> tuple[bytes | None, bytes, Headers]:
        """Key, value and headers of this letter cut down to a size any producer accepts, for a
        record the producer refused as it is (`error`)."""
        reason = TOO_LARGE if isinstance(error, _TOO_LARGE_ERRORS) else UNSENDABLE
        value = self.value or b""
        headers_size = sum(len(k.encode(errors="replace")) + len(v) for k, v in self.headers)
        message = f"{self.message}; dead-lettered truncated: {error}"
        return (
            None if self.key is None else self.key[:KEY_PREFIX_BYTES],
            value[:PREFIX_BYTES],
            [
                (REASON, reason.encode()),
                (MESSAGE, message.encode(errors="replace")[:1024]),
                (SOURCE_TOPIC, self.topic.encode(errors="replace")[:256]),
                (SOURCE_PARTITION, str(self.partition).encode()),
                (SOURCE_OFFSET, str(self.offset).encode()),
                (DEAD_AT, str(now_ms).encode()),
                (TRUNCATED, b"1"),
                (ORIGINAL_REASON, self.reason.encode(errors="replace")[:256]),
                (ORIGINAL_SIZE, str(len(value)).encode()),
                (ORIGINAL_KEY_SIZE, str(len(self.key or b"")).encode()),
                (ORIGINAL_HEADERS_SIZE, str(headers_size).encode()),
            ],
        )


async def send_dead_letters(
    producer: AIOKafkaProducer, topic: str, letters: Sequence[DeadLetter]
) -> int:
    """Produce `letters` to `topic` and wait until the broker has every one of them. A letter
    the producer refuses as it is (`REFUSED_RECORD`) is sent truncated (`DeadLetter.truncated`).
    Returns how many were truncated; raises only what is worth retrying (the whole call)."""
    if not letters:
        return 0
    now_ms = time.time_ns() // 1_000_000
    pending: list[tuple[DeadLetter, asyncio.Future[object]]] = []
    refused: list[tuple[DeadLetter, BaseException]] = []
    for letter in letters:
        try:
            future = await producer.send(
                topic, value=letter.value, key=letter.key, headers=letter.dlq_headers(now_ms)
            )
        except REFUSED_RECORD as exc:
            refused.append((letter, exc))
        else:
            pending.append((letter, future))
    outcomes = await asyncio.gather(*(f for _, f in pending), return_exceptions=True)
    for (letter, _), outcome in zip(pending, outcomes, strict=True):
        if isinstance(outcome, REFUSED_RECORD):
            refused.append((letter, outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
    if not refused:
        return 0
    futures = []
    for letter, error in refused:
        key, value, headers = letter.truncated(now_ms, error)
        log.warning(
            "dead_letter_truncated",
            reason=letter.reason,
            topic=letter.topic,
            partition=letter.partition,
            offset=letter.offset,
            size=len(letter.value or b""),
            error=type(error).__name__,
        )
        futures.append(await producer.send(topic, value=value, key=key, headers=headers))
    await asyncio.gather(*futures)
    return len(refused)


def header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """The last value of header `name`, decoded, or None."""
    found: str | None = None
    for k, v in headers:
        if k == name:
            found = v.decode(errors="replace")
    return found


@dataclass
class ReplayReport:
    scanned: int = 0
    replayed: int = 0
    truncated: int = 0
    """Truncated letters skipped: they no longer hold the record, so cannot settle."""
    by_reason: Counter[str] = field(default_factory=Counter)


async def scan_topic(
    bootstrap: str, topic: str, *, poll_timeout_ms: int = 1000
) -> AsyncIterator[Any]:
    """Every record of `topic` present when the scan starts, partition by partition in order.

    A partition is read until its end offset as of the start. Some brokers report the end of a
    partition as one past the first record of its last record batch, so the scan reads that last
    batch whole: it may also yield a few records appended while it runs, never an endless stream.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **kafka.client_options(),
    )
    await consumer.start()
    try:
        await consumer.topics()  # refreshes metadata
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > starts[tp]}
        for tp in tps:
            consumer.seek(tp, starts[tp])
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=poll_timeout_ms)
            for tp, records in batch.items():
                for record in records:
                    yield record
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()


async def replay(
    bootstrap: str,
    dlq_topic: str,
    usage_topic: str,
    *,
    reasons: Collection[str] | None = None,
) -> ReplayReport:
    """Copy the dead letters present now back to `usage_topic`, with their original key, value
    and headers, keeping only those whose reason is in `reasons` (all when None). Returns what
    was scanned and replayed, per reason."""
    report = ReplayReport()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, acks="all", **kafka.client_options()
    )
    await producer.start()
    try:
        futures: list[asyncio.Future[object]] = []
        async for record in scan_topic(bootstrap, dlq_topic):
            report.scanned += 1
            reason = header(record.headers, REASON) or "unknown"
            if reasons is not None and reason not in reasons:
                continue
            if header(record.headers, TRUNCATED) is not None:
                report.truncated += 1
                continue
            headers = [(k, v) for k, v in record.headers if k not in _OWN_HEADERS]
            origin = f"{dlq_topic}/{record.partition}/{record.offset}".encode()
            headers.append((REPLAYED_FROM, origin))
            futures.append(
                await producer.send(
                    usage_topic, value=record.value, key=record.key, headers=headers
                )
            )
            report.replayed += 1
            report.by_reason[reason] += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    log.info(
        "dlq_replay",
        dlq_topic=dlq_topic,
        usage_topic=usage_topic,
        scanned=report.scanned,
        replayed=report.replayed,
        truncated=report.truncated,
        by_reason=dict(report.by_reason),
    )
    return report


def configure_dlq(parser: argparse.ArgumentParser) -> Handler:
    """`meter dlq replay [--reason CODE ...]`: copy dead letters back to the usage topic;
    `meter dlq list [--org ORG] [--reason CODE]`: the dead letters PostgreSQL indexes."""
    sub = parser.add_subparsers(dest="dlq_command", metavar="ACTION", required=True)
    replay_parser = sub.add_parser(
        "replay", help="re-produce dead letters to the usage topic (all, or by reason)"
    )
    replay_parser.add_argument(
        "--reason",
        action="append",
        dest="reasons",
        metavar="CODE",
        help="only dead letters with this reason code (repeatable), e.g. unknown_member",
    )

    list_parser = sub.add_parser(
        "list", help="dead letters indexed in PostgreSQL, newest first (organization known)"
    )
    list_parser.add_argument("--org", metavar="ORG", help="only this organization's")
    list_parser.add_argument("--reason", metavar="CODE", help="only this reason code")
    list_parser.add_argument("--limit", type=int, default=100, help="at most this many (100)")

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.services import provision

        if args.dlq_command == "list":
            return await list_command(settings, args.org, args.reason, args.limit)
        async with provision(settings, only={"kafka"}) as services:
            report = await replay(
                services.kafka_bootstrap,
                settings.dlq_topic,
                settings.usage_topic,
                reasons=set(args.reasons) if args.reasons else None,
            )
        print(
            f"scanned {report.scanned}, replayed {report.replayed}"
            + (f", skipped {report.truncated} truncated" if report.truncated else "")
            + "".join(f", {reason}: {n}" for reason, n in sorted(report.by_reason.items())),
            flush=True,
        )
        return 0

    return handle


async def list_command(settings: Settings, org: str | None, reason: str | None, limit: int) -> int:
    """Print the indexed dead letters, one line each: when, organization, reason, source
    position, detail."""
    import asyncpg  # type: ignore[import-untyped]

    from meter.admin.reads import MAX_PAGE, dead_letters
    from meter.errors import MeterError
    from meter.migrate import migrate
    from meter.services import provision

    if not 1 <= limit <= MAX_PAGE:
        print(f"meter dlq list: --limit is 1..{MAX_PAGE}", file=sys.stderr)
        return 2
    async with provision(settings, only={"postgres"}) as services:
        await migrate(services.postgres_dsn)
        pool = await asyncpg.create_pool(services.postgres_dsn, min_size=1, max_size=1)
        try:
            page = await dead_letters(pool, org, reason=reason, limit=limit)
        except MeterError as exc:
            print(f"meter dlq list: {exc.message}", file=sys.stderr)
            return 1
        finally:
            await pool.close()
    for d in page.dead_letters:
        print(
            f"{d.created_at.isoformat()} {d.org_id} {d.reason}"
            f" {d.topic}/{d.partition}/{d.offset} {d.detail}",
            flush=True,
        )
    if page.next_after is not None:
        print(f"(more: {limit} shown)", flush=True)
    return 0
