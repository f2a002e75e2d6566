"""Stored offsets outside a partition's log, and what the consumer does about them.

The consumer keeps its offsets in PostgreSQL. On assignment each stored offset is compared with
the partition's log:

- beyond its end: the topic was deleted and created again (or the broker lost its data), so the
  offsets of its new records start again from 0;
- before its beginning: retention removed records the consumer had not read yet.

Either way the offset is moved by the policy `METER_OFFSET_RESET`:

- `earliest` (default): the first offset still in the log; nothing in the log is skipped, and
  what was settled before is not settled twice (settling is idempotent by organization and key);
- `latest`: the end of the log, skipping what is there now;
- `fail`: the consumer stops with `OffsetsOutOfRange` and its readiness says why.

Each move is logged (`offsets_out_of_range`, with the stored, beginning and end offsets) and
counted (`meter_consumer_offset_resets_total`).

Some brokers report the end of a partition as one past the first record of its last record batch,
which can be below an offset the consumer has legitimately reached. So an offset beyond the
reported end is only taken as beyond the log when the record just before it cannot be read
(`missing_before`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from meter import kafka

Policy = Literal["earliest", "latest", "fail"]

PROBE_TIMEOUT_S = 2.0
"""How long `missing_before` waits for the record before a stored offset."""


class OffsetsOutOfRange(Exception):
    """Stored offsets lie outside their partitions' logs and the policy is `fail`."""

    code = "offsets_out_of_range"

    def __init__(self, resets: list[OffsetReset]) -> None:
        super().__init__("; ".join(r.describe() for r in resets))
        self.resets = resets


@dataclass(frozen=True, slots=True)
class OffsetReset:
    """A stored offset outside its partition's log, and where the policy moves it."""

    partition: int
    stored: int
    beginning: int
    end: int
    reset_to: int
    where: Literal["beyond_end", "before_beginning"]

    def describe(self) -> str:
        return (
            f"partition {self.partition}: stored offset {self.stored} is {self.where} of the log"
            f" [{self.beginning}, {self.end})"
        )


def suspects(stored: Mapping[int, int], ends: Mapping[int, int]) -> dict[int, int]:
    """Partitions whose stored offset is past the reported end: partition -> stored offset."""
    return {p: o for p, o in stored.items() if o > ends[p]}


def resets(
    stored: Mapping[int, int],
    beginnings: Mapping[int, int],
    ends: Mapping[int, int],
    beyond: set[int],
    policy: Policy,
) -> list[OffsetReset]:
    """The moves `policy` makes: for stored offsets before their log's beginning, and for those
    in `beyond` (confirmed past the end of their log)."""
    out: list[OffsetReset] = []
    for partition, offset in sorted(stored.items()):
        begin, end = beginnings[partition], max(ends[partition], beginnings[partition])
        if partition in beyond:
            where: Literal["beyond_end", "before_beginning"] = "beyond_end"
        elif offset < begin:
            where = "before_beginning"
        else:
            continue
        reset_to = end if policy == "latest" else begin
        out.append(OffsetReset(partition, offset, begin, end, reset_to, where))
    return out


async def missing_before(
    bootstrap: str, topic: str, offsets: Mapping[int, int], timeout_s: float = PROBE_TIMEOUT_S
) -> set[int]:
    """The partitions of `offsets` (partition -> stored offset > 0) whose record at offset - 1
    is not in the log: their stored offset is beyond the end of the log."""
    if not offsets:
        return set()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="none",
        **kafka.client_options(),
    )
    await consumer.start()
    try:
        tps = {TopicPartition(topic, p): o - 1 for p, o in offsets.items()}
        consumer.assign(list(tps))
        for tp, offset in tps.items():
            consumer.seek(tp, offset)
        waiting = set(tps)
        found: set[TopicPartition] = set()
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            try:
                polled = await consumer.getmany(*waiting, timeout_ms=100)
            except OffsetOutOfRangeError as exc:
                out_of_range = set(exc.args[0]) if exc.args else set()
                waiting -= out_of_range or waiting
                continue
            for tp, records in polled.items():
                if any(r.offset == tps[tp] for r in records):
                    found.add(tp)
                waiting.discard(tp)
        return {tp.partition for tp in tps if tp not in found}
    finally:
        await consumer.stop()
