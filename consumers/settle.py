"""`meter consume`: the settlement consumer, Kafka -> engine (Redis) -> PostgreSQL.

A fixed chain of stages per batch:

    poll (size and time bounded) -> decode + validate -> drop keys PostgreSQL already has
    -> issue the seats of a period new to an organization -> one `engine.settle_batch` per
    organization -> dead-letter what cannot settle
    -> write settlements + offsets in one PostgreSQL transaction -> `engine.confirm`

While one write runs, the next batches are polled and settled; they are written together in
the next transaction (up to `write_max_records`), so a slow PostgreSQL gets fewer, larger writes
(each total row touched once per write, not per batch). Writing retries with exponential backoff
while PostgreSQL is unavailable; once the next write is full nothing more is polled
(backpressure). Engine results stay pending in Redis until confirmed, so retrying, abandoning or
re-reading a batch is always safe.

No event waits on the scheduler for its period's seats: before an organization's events settle,
`meter.admin.issuance.SeatPeriods` makes sure the seats of their events' periods are issued
and in Redis: nothing within a period already seen, one PostgreSQL probe otherwise, and the
issuance itself when no one did it yet.

Offsets live in PostgreSQL (`consumer_offsets`). On assignment the consumer seeks to them; each
write advances them only from the offset this member expects, so a member that lost its
partitions in a rebalance cannot write over the new owner (`OffsetConflict`: re-read, re-seek).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from consumers import offsets
from consumers.dead_letters import record_dead_letters
from consumers.dlq import DeadLetter, send_dead_letters
from consumers.stages import (
    Decoded,
    Decoder,
    Identity,
    Record,
    Settled,
    Sorted,
    chunks,
    decode_batch,
    drop_keys,
    encode_results,
    rate_batch,
    refused_letters,
    settle_waves,
    sort_results,
)
from meter import alerts, kafka, metrics
from meter.admin.issuance import SeatPeriods
from meter.admin.service import AdminService
from meter.engine.model import validate_events
from meter.engine.redis import (
    EncodedResults,
    RedisEngine,
    confirm_pipelined,
    settle_encoded,
    settle_pipelined,
)
from meter.engine.types import MAX_AMOUNT, Engine, EngineInputError, Reason, UsageEvent
from meter.health import HEALTH
from meter.quarantine import ORG_QUARANTINED
from meter.rating.book import CardCache, org_plans
from meter.rebuild import quarantine_org
from meter.recovery import Recovery
from meter.redis_client import UNAVAILABLE as REDIS_UNAVAILABLE
from meter.redis_client import connect as redis_connect
from meter.settings import Settings
from meter.store import (
    BatchRows,
    OffsetAdvance,
    OffsetConflict,
    RowsBuilder,
    SettlementStore,
    merge_rows,
)
from meter.supervise import wait_event
from schemas.events import DecodedEvent, EventError, decode_event

if TYPE_CHECKING:
    from meter.cli import Handler
    from meter.services import Services

log = structlog.get_logger("consumers.settle")

T = TypeVar("T")

HEALTH_COMPONENT = "consumer"
"""The settlement consumer's name in `meter.health.HEALTH`."""

YIELD_EVERY = 250
"""Records a batch's decoding, and settlements its COPY records, handled between two yields to
the event loop. A batch prepares while the batches before it are written: each statement of the
write waits for the loop, which a whole batch decoded in one go held for 50 ms and more. At
10,000 events/s a batch holds 500 to 900 records: with slices of 1,000 it decoded and built its
rows without a yield, and any of the write's seven round trips could wait for that. With 250 the
lag p99 was lower in six of seven alternated runs (consumers/README.md, "The lag at 10,000
events/s")."""


TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    *REDIS_UNAVAILABLE,
    KafkaError,
)
"""Failures a stage retries with backoff: the server is down, restarting or overloaded."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Stopping(Exception):
    """Raised inside a retry loop when the consumer is asked to stop."""


@dataclass(frozen=True)
class ConsumerOptions:
    batch_max_records: int = 20_000
    batch_max_wait_ms: int = 50
    org_concurrency: int = 16
    """Engine calls in flight at once within a batch."""
    wave_events: int = 5_000
    """Events of a batch's engine pipeline sent together (`_settle_at_once`): a batch of 20,000
    goes in four waves, and the consumer builds each wave's rows while Redis settles the next
    (1,000,000 events of 100 organizations: 80,900-84,300 events/s against 76,300-78,500 in one
    wave, three alternated pairs)."""
    confirm_max_keys: int = 20_000
    confirm_interval_s: float = 0.5
    """Written results are confirmed to the engine (freeing them in Redis) in one call per
    organization once this many are waiting or this long after the last confirm."""
    retry_initial_s: float = 0.05
    retry_max_s: float = 5.0
    drain_timeout_s: float = 10.0
    """How long a rebalance or shutdown waits for the batch being written before abandoning it."""
    idle_guard_s: float = 1.0
    """While no records arrive, how often the rebuild lock is still checked (so a rebuild
    elsewhere does not wait on an idle consumer)."""
    write_max_records: int = 80_000
    """Batches settled while a write is in flight wait and are written together in the next
    transaction (one offset advance, one totals statement), up to this many records."""


@dataclass
class Batch:
    """A batch settled in Redis, ready to be written."""

    seq: int
    generation: int
    offsets: list[OffsetAdvance]
    rows: BatchRows
    """The settlements to write as COPY records, built as the batch settles (off the write's
    critical path). Only these are kept, not the engine's encoding they were built from: a
    batch waits in memory until it is written, beside the batches settling after it."""
    keys_by_org: dict[str, list[str]]
    records: int
    duplicates: int
    dead: int
    replayed: int
    polled_at: float
    timings: dict[str, float] = field(default_factory=dict)
    settled: set[Identity] = field(default_factory=set)
    """(organization, key) of each settlement in `rows`: what a later batch's lookup counts
    as settled while this one is in flight."""


@dataclass
class Fetched:
    """Records read past the expected offsets and decoded, not yet settled."""

    generation: int
    offsets: list[OffsetAdvance]
    records: list[Record]
    decoded: Decoded
    started: float
    decode_s: float


async def _dropped(task: asyncio.Task[Fetched | None] | None) -> None:
    """Cancel a fetch ahead and wait for it to end: what it read is read again after the resync
    (or the restart) that follows, from the offsets PostgreSQL holds."""
    if task is not None:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # (a fetch that failed: retrieved, it is read again all the same)


def merge_batches(batches: list[Batch]) -> Batch:
    """Consecutive batches of one generation as one write: each partition advances from the
    first batch's expected offset to the last batch's next offset."""
    if len(batches) == 1:
        return batches[0]
    first, last = batches[0], batches[-1]
    advances: dict[int, OffsetAdvance] = {}
    keys_by_org: dict[str, list[str]] = {}
    timings: dict[str, float] = {}
    for b in batches:
        for o in b.offsets:
            known = advances.get(o.partition)
            expected = o.expected if known is None else known.expected
            advances[o.partition] = OffsetAdvance(o.partition, expected, o.next_offset)
        for org_id, keys in b.keys_by_org.items():
            keys_by_org.setdefault(org_id, []).extend(keys)
        for name, value in b.timings.items():
            timings[name] = timings.get(name, 0.0) + value
    return Batch(
        seq=last.seq,
        generation=last.generation,
        offsets=list(advances.values()),
        rows=merge_rows([b.rows for b in batches]),
        keys_by_org=keys_by_org,
        records=sum(b.records for b in batches),
        duplicates=sum(b.duplicates for b in batches),
        dead=sum(b.dead for b in batches),
        replayed=sum(b.replayed for b in batches),
        polled_at=first.polled_at,
        timings=timings,
    )


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: SettleConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self._owner._on_assigned(assigned)


class SettleConsumer:
    """One consumer-group member settling `topic`. `run()` until `stop()`."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        dlq_topic: str,
        group_id: str,
        engine: Engine,
        store: SettlementStore,
        decoder: Decoder,
        options: ConsumerOptions | None = None,
        client_id: str = "meter-consume",
        recovery: Recovery | None = None,
        trusted: bool = False,
        offset_reset: offsets.Policy = "earliest",
        stall_after_s: float = 60.0,
        issue_seats: bool = True,
        session_timeout_ms: int = 10_000,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dlq_topic = dlq_topic
        self.group_id = group_id
        self.engine = engine
        self.store = store
        self.decoder = decoder
        self.options = options or ConsumerOptions()
        self.trusted = trusted
        """The decoder already validated every event as the engine would (`settle_batch`
        `trusted=True`): ids, instants, and credits within the engine's range."""
        self.offset_reset: offsets.Policy = offset_reset
        """What to do with a stored offset outside its partition's log (`consumers.offsets`)."""
        self.stall_after_s = stall_after_s
        """With records waiting, how long without a batch written before readiness fails."""
        self.issue_seats = issue_seats
        """Issue a period's seats before settling its first events (`SeatPeriods`)."""
        self.max_event_credits = MAX_AMOUNT
        """Most credits a usage event may rate to (`Settings.max_event_credits`, capped)."""
        self.cards = CardCache(check_interval_s=0.0)
        """Rate cards, checked for a new version in each batch that holds usage events."""
        self.seats: SeatPeriods | None = None
        self._seats_pool: asyncpg.Pool | None = None
        self._progress_at = time.monotonic()
        self._written: dict[int, int] = {}
        """Per partition: the next offset after the last batch written to PostgreSQL."""
        self.recovery = recovery
        """When set, settling waits for a Redis holding PostgreSQL's state (see `meter.rebuild`)."""
        self._guarded_at = 0.0
        self._redis_engine = engine if isinstance(engine, RedisEngine) else None
        """Set for the Redis engine, whose results stay in its own encoding (`settle_encoded`),
        which the store writes from."""
        self.consumer = AIOKafkaConsumer(
            **kafka.client_options(),
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=1 << 20,
            fetch_max_bytes=16 << 20,
            fetch_max_wait_ms=self.options.batch_max_wait_ms,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=min(3_000, session_timeout_ms // 3),
        )
        self.producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=client_id,
            enable_idempotence=False,
            acks="all",
            **kafka.client_options(),
        )
        self._stopping = asyncio.Event()
        self._generation = 0
        self._resync = False
        self._expected: dict[int, int] = {}
        """Per assigned partition: the offset the next batch starts from."""
        self._seq = 0
        self._committed_seq = 0
        self._inflight_keys: dict[int, set[Identity]] = {}
        self._write_task: asyncio.Task[None] | None = None
        self._queued: list[Batch] = []
        """Batches settled while a write was in flight, written together next."""
        self._queued_records = 0
        self._confirm_task: asyncio.Task[None] | None = None
        self._unconfirmed: dict[str, list[str]] = {}
        """Keys written to PostgreSQL and not yet confirmed to the engine, per organization."""
        self._unconfirmed_keys = 0
        self._confirmed_at = time.monotonic()
        self.settled = 0
        """Settlements written by this consumer (new rows only)."""
        self.batches = 0
        self.retries = 0
        """Transient failures met so far (each retried)."""

    # -- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run()` to finish the batch in flight (or abandon it) and leave the group."""
        self._stopping.set()

    async def run(self) -> None:
        await self.store.open()
        if self.issue_seats and self.seats is None:
            self._seats_pool = await asyncpg.create_pool(
                self.store.dsn, min_size=0, max_size=2, command_timeout=60.0
            )
            self.seats = SeatPeriods(AdminService(self._seats_pool, self.engine, now_ms))
        await self.producer.start()
        await self.consumer.start()
        self._progress_at = time.monotonic()
        watchdog = asyncio.create_task(self._watch_progress())
        failed = True
        try:
            await self._guard()
            self.consumer.subscribe([self.topic], listener=_Listener(self))
            log.info("consumer_started", topic=self.topic, group=self.group_id)
            await self._loop()
            failed = False
        except Stopping:
            failed = False
        finally:
            self._stopping.set()
            watchdog.cancel()
            await asyncio.wait({watchdog})
            if not failed:
                HEALTH.ok(HEALTH_COMPONENT)
                metrics.consumer_stalled(0.0)
            await self._finish_write(self.options.drain_timeout_s)
            await self._finish_confirm(self.options.drain_timeout_s)
            if self.recovery is not None:
                with contextlib.suppress(Exception):
                    await self.recovery.close()
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            with contextlib.suppress(Exception):
                await self.producer.stop()
            await self.store.close()
            if self._seats_pool is not None:
                pool, self._seats_pool, self.seats = self._seats_pool, None, None
                await pool.close()
            log.info("consumer_stopped", settled=self.settled, batches=self.batches)

    async def _loop(self) -> None:
        opts = self.options
        ahead: asyncio.Task[Fetched | None] | None = None
        try:
            while not self._stopping.is_set():
                if self._resync:
                    await _dropped(ahead)
                    ahead = None
                    await self._do_resync()
                    continue
                if ahead is None:
                    fetched = await self._fetch(self._generation)
                else:
                    fetched, ahead = await ahead, None
                if self._queued:
                    await self._flush_if_idle()
                if fetched is None:
                    if self._unconfirmed and self._writer_idle():
                        self._start_confirm()
                    if time.monotonic() - self._guarded_at > opts.idle_guard_s:
                        await self._guard()
                    continue
                await self._guard()
                if fetched.generation != self._generation or self._resync:
                    continue  # read before a rebalance; resync re-reads from PostgreSQL
                if self._unread() >= opts.batch_max_records:
                    # Behind (a batch's worth waits after this one): the next batch is read and
                    # decoded while this one settles, in the time the consumer waits for the key
                    # lookup and for Redis. Caught up, the next poll waits for this batch
                    # instead, and takes everything that came meanwhile in one batch.
                    ahead = asyncio.create_task(self._fetch(self._generation))
                batch = await self._prepare(fetched)
                if batch is None:
                    continue
                if batch.generation != self._generation or self._resync:
                    continue  # a rebalance happened meanwhile; resync re-reads from PostgreSQL
                self._inflight_keys[batch.seq] = batch.settled
                self._queued.append(batch)
                self._queued_records += batch.records
                if self._queued_records + opts.batch_max_records > opts.write_max_records:
                    # Backpressure: the next batch would not fit the next write.
                    await self._wait_write(None)
                await self._flush_if_idle()
        finally:
            await _dropped(ahead)

    def _writer_idle(self) -> bool:
        return self._write_task is None or self._write_task.done()

    async def _flush_if_idle(self) -> None:
        """With no write in flight, write every queued batch in one transaction, in a task of
        its own (a write that failed meanwhile sends the consumer to resync instead)."""
        if not self._writer_idle():
            return
        await self._wait_write(None)  # done already: reap its outcome
        if self._resync:
            self._queued, self._queued_records = [], 0
            return
        if not self._queued:
            return
        queued, self._queued, self._queued_records = self._queued, [], 0
        self._write_task = asyncio.create_task(self._write(merge_batches(queued)))

    def _unread(self) -> int:
        """Records on the assigned partitions after those read."""
        return self._records_after(self._expected)

    def lag(self) -> int:
        """Records on the assigned partitions after what PostgreSQL holds."""
        return self._records_after({**self._expected, **self._written})

    def _records_after(self, offsets: Mapping[int, int]) -> int:
        """Records on the assigned partitions from `offsets` (per partition) on, as of the last
        fetch's high watermarks."""
        total = 0
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            offset = offsets.get(tp.partition)
            if highwater is not None and offset is not None:
                total += max(0, highwater - offset)
        return total

    def check_progress(self) -> float:
        """Report in `HEALTH` (and `meter_consumer_stalled_seconds`) a consumer that wrote no
        batch for `stall_after_s` while records wait. Returns the seconds stalled (0 if not)."""
        now = time.monotonic()
        lag = self.lag()
        if lag == 0:
            self._progress_at = now
        stalled = now - self._progress_at if lag > 0 else 0.0
        metrics.consumer_stalled(stalled)
        if stalled >= self.stall_after_s:
            HEALTH.fail(
                HEALTH_COMPONENT,
                f"no_progress: no batch written for {stalled:.0f} s with {lag} records waiting",
            )
            return stalled
        HEALTH.ok(HEALTH_COMPONENT)
        return 0.0

    async def _watch_progress(self) -> None:
        """`check_progress` once a second, beside the loop (which may be stuck retrying)."""
        interval = min(1.0, self.stall_after_s / 4)
        while True:
            await asyncio.sleep(interval)
            self.check_progress()

    async def _guard(self) -> None:
        """Before settling: make sure Redis holds PostgreSQL's state (rebuild it if it lost its
        data), finishing the batch being written first."""
        if self.recovery is None:
            return
        await self._retry("recovery", self.recovery.guard, self._drain)
        self._guarded_at = time.monotonic()

    async def _drain(self) -> None:
        await self._finish_write(None)
        await self._finish_confirm()

    # -- rebalance ------------------------------------------------------------------------------

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        self._generation += 1
        await self._finish_write(self.options.drain_timeout_s)
        for tp in revoked:
            self._expected.pop(tp.partition, None)
        log.info("partitions_revoked", partitions=sorted(tp.partition for tp in revoked))

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self._generation += 1
        if assigned:
            self.consumer.pause(*assigned)
        self._resync = True
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    async def _do_resync(self) -> None:
        """Seek every assigned partition to the offset stored in PostgreSQL."""
        await self._finish_write(self.options.drain_timeout_s)
        self._inflight_keys.clear()
        self._generation += 1
        generation = self._generation
        assigned = sorted(self.consumer.assignment(), key=lambda tp: tp.partition)
        self._resync = False
        if not assigned:
            self._expected.clear()
            return
        beginnings = await self._retry(
            "beginning_offsets", self.consumer.beginning_offsets, assigned
        )
        begin = {tp.partition: int(offset) for tp, offset in beginnings.items()}
        stored = await self._retry(
            "load_offsets", self.store.load_offsets, self.group_id, self.topic, begin
        )
        if generation != self._generation or self._resync:
            return  # another rebalance; the next resync will do it again
        if not await self._apply_offset_policy(assigned, begin, stored):
            self._resync = True
            return
        self._expected = {}
        self._written = {}
        for tp in assigned:
            offset = stored[tp.partition]
            self._written[tp.partition] = offset
            self.consumer.seek(tp, offset)
            self._expected[tp.partition] = offset
        self.consumer.resume(*assigned)
        log.info("offsets_restored", offsets={str(p): o for p, o in self._expected.items()})

    async def _apply_offset_policy(
        self, assigned: list[TopicPartition], begin: dict[int, int], stored: dict[int, int]
    ) -> bool:
        """Move stored offsets outside their partition's log by `offset_reset` (see
        `consumers.offsets`), updating `stored`. False when another writer moved them first."""
        ends_tp = await self._retry("end_offsets", self.consumer.end_offsets, assigned)
        ends = {tp.partition: int(offset) for tp, offset in ends_tp.items()}
        suspects = offsets.suspects(stored, ends)
        beyond: set[int] = set()
        if suspects:
            beyond = await self._retry(
                "probe_offsets", offsets.missing_before, self.bootstrap, self.topic, suspects
            )
        moves = offsets.resets(stored, begin, ends, beyond, self.offset_reset)
        if not moves:
            return True
        for move in moves:
            log.warning(
                "offsets_out_of_range",
                topic=self.topic,
                partition=move.partition,
                stored=move.stored,
                beginning=move.beginning,
                end=move.end,
                where=move.where,
                policy=self.offset_reset,
                reset_to=None if self.offset_reset == "fail" else move.reset_to,
            )
            metrics.offset_reset(self.topic, move.where, self.offset_reset)
        if self.offset_reset == "fail":
            error = offsets.OffsetsOutOfRange(moves)
            HEALTH.fail(HEALTH_COMPONENT, f"{error.code}: {error}")
            raise error
        advances = [OffsetAdvance(m.partition, m.stored, m.reset_to) for m in moves]
        try:
            await self._retry(
                "reset_offsets", self.store.move_offsets, self.group_id, self.topic, advances
            )
        except OffsetConflict:
            return False
        stored.update({m.partition: m.reset_to for m in moves})
        return True

    # -- stages ---------------------------------------------------------------------------------

    async def _fetch(self, generation: int) -> Fetched | None:
        """The next records past the expected offsets, decoded; None when none came, when a
        rebalance began meanwhile (the resync that follows reads them again) or when the client
        moved back (which sends the consumer to resync)."""
        opts = self.options
        polled = await self.consumer.getmany(
            timeout_ms=opts.batch_max_wait_ms, max_records=opts.batch_max_records
        )
        metrics.consumer_positions(self.consumer, self.topic, self._expected)
        if not polled or generation != self._generation or self._resync:
            return None
        started = time.perf_counter()
        offsets: list[OffsetAdvance] = []
        records: list[Record] = []
        for tp, recs in polled.items():
            expected = self._expected.get(tp.partition)
            if expected is None:
                continue
            if recs and recs[-1].offset < expected:
                # The client moved back below what it was asked to read: the broker said the
                # offset is out of range (a recreated topic). Check it against the log again.
                log.warning(
                    "position_reset",
                    partition=tp.partition,
                    expected=expected,
                    received=recs[-1].offset,
                )
                self._resync = True
                return None
            if recs and recs[0].offset < expected:
                recs = [r for r in recs if r.offset >= expected]
            if not recs:
                continue
            next_offset = recs[-1].offset + 1
            offsets.append(OffsetAdvance(tp.partition, expected, next_offset))
            records.extend(recs)
        if not offsets:
            return None
        for advance in offsets:
            self._expected[advance.partition] = advance.next_offset

        t0 = time.perf_counter()
        decoded, at = Decoded(), now_ms()
        for part in chunks(records, YIELD_EVERY):
            decode_batch(part, self.decoder, at, into=decoded)
            await asyncio.sleep(0)
        return Fetched(generation, offsets, records, decoded, started, time.perf_counter() - t0)

    async def _prepare(self, fetched: Fetched) -> Batch | None:
        generation, offsets, records = fetched.generation, fetched.offsets, fetched.records
        decoded, started, t_decode = fetched.decoded, fetched.started, fetched.decode_s

        t0 = time.perf_counter()
        duplicates = await self._drop_settled(decoded)
        if decoded.usages:
            await self._retry("rate", self._rate, decoded)
        t_lookup = time.perf_counter() - t0

        t0 = time.perf_counter()
        sorted_, builder = Sorted(), RowsBuilder()
        t_rows = 0.0

        async def take(results: Mapping[str, Settled]) -> None:
            """What some organizations settled: sorted, and their COPY records built (while
            Redis settles the next wave, `_settle_at_once`)."""
            nonlocal t_rows
            started = time.perf_counter()
            first = len(sorted_.store)
            sort_results(results, decoded.records, decoded.attributes, decoded.ratings, sorted_)
            for items in chunks(sorted_.store[first:], YIELD_EVERY):
                builder.add(items)
                await asyncio.sleep(0)
            t_rows += time.perf_counter() - started

        refused = await self._settle(decoded.by_org, now_ms(), take)
        t_engine = time.perf_counter() - t0 - t_rows

        if (
            sorted_.dead
            and self.recovery is not None
            and not await self._retry("recovery", self.recovery.still_valid)
        ):
            # Redis restarted empty while this batch settled: its refusals mean nothing. Drop the
            # batch; the next guard rebuilds and the resync reads it again.
            log.warning("batch_dropped", reason="redis_lost_data", records=len(records))
            self._resync = True
            return None
        dead: list[DeadLetter] = (
            decoded.dead + sorted_.dead + refused_letters(refused, decoded.records)
        )
        metrics.batch_settled(len(records), t_engine, (d.reason for d in dead))
        t0 = time.perf_counter()
        if dead:
            truncated = await self._retry(
                "dead_letter", send_dead_letters, self.producer, self.dlq_topic, dead
            )
            metrics.dead_letters_truncated(truncated)
            await self._retry("record_dead_letters", record_dead_letters, self.store.pool, dead)
        t_dlq = time.perf_counter() - t0

        t0 = time.perf_counter()
        rows = builder.rows(ordered=False)
        t_rows += time.perf_counter() - t0

        self._seq += 1
        return Batch(
            seq=self._seq,
            generation=generation,
            offsets=offsets,
            rows=rows,
            keys_by_org=sorted_.keys_by_org,
            settled=sorted_.settled,
            records=len(records),
            duplicates=duplicates,
            dead=len(dead),
            replayed=sorted_.replayed,
            polled_at=started,
            timings={
                "decode_ms": t_decode * 1000,
                "lookup_ms": t_lookup * 1000,
                "engine_ms": t_engine * 1000,
                "dlq_ms": t_dlq * 1000,
                "rows_ms": t_rows * 1000,
            },
        )

    async def _drop_settled(self, decoded: Decoded) -> int:
        """Drop events PostgreSQL already holds, or that a batch still being written holds."""
        keys = list(decoded.records)
        if not keys:
            return 0
        committed = self._committed_seq
        existing = await self._retry("existing_keys", self.store.existing_keys, keys)
        for seq in [s for s in self._inflight_keys if s <= committed]:
            del self._inflight_keys[seq]
        # A set meets the dict's keys view directly (one side walked, each looked up in the
        # other), without a set of the batch's keys built first.
        batch = decoded.records.keys()
        for pending in self._inflight_keys.values():
            existing |= pending & batch
        return drop_keys(decoded, existing)

    async def _rate(self, decoded: Decoded) -> None:
        """Rate the batch's usage events with the cards in force (reloaded on a new version)."""
        orgs = sorted({org_id for org_id, _ in decoded.usages})
        async with self.store.pool.acquire() as conn:
            book = await self.cards.refresh(conn)
            plans = await org_plans(conn, orgs)
        rate_batch(decoded, book, plans, self.max_event_credits)

    async def _settle(
        self,
        by_org: dict[str, list[UsageEvent]],
        at_ms: int,
        take: Callable[[Mapping[str, Settled]], Awaitable[None]],
    ) -> dict[Identity, str]:
        """One engine call per organization, all in one round trip where the engine allows
        (`_settle_at_once`), each organization's results handed to `take` once (in waves, as
        they come in). Returns the events the engine refused as input (`EngineInputError`),
        (organization, key) -> why."""
        refused: dict[Identity, str] = {}
        limit = asyncio.Semaphore(self.options.org_concurrency)
        orgs = list(by_org)
        if self.recovery is not None:
            self.recovery.settling(orgs)
        taken, held = await self._settle_at_once(by_org, at_ms, take)

        async def one(org_id: str) -> Settled:
            async with limit:
                return await self._settle_org(org_id, by_org[org_id], at_ms, refused)

        # What the pipeline settled is taken as it is; only the rest go out one by one, each in
        # a task of its own (a hundred tasks cost about 0.4 ms, for nothing when all are ready).
        alone = [org_id for org_id in orgs if org_id not in taken and org_id not in held]
        by_itself = dict(zip(alone, await asyncio.gather(*(one(o) for o in alone)), strict=True))
        settled = {
            org_id: (by_org[org_id], held[org_id]) if org_id in held else by_itself[org_id]
            for org_id in orgs
            if org_id not in taken
        }
        lost = [o for o, (_, (_, bodies)) in settled.items() if Reason.UNKNOWN_ORG.value in bodies]
        if lost and self.recovery is not None:
            # Organizations PostgreSQL knows answered unknown_org: their shard lost them.
            # Rebuild those (after this consumer's writes) and settle their events again.
            again = await self._retry("recovery", self.recovery.recover, lost, self._drain)
            redone = await asyncio.gather(*(one(org) for org in again))
            settled.update(zip(again, redone, strict=True))
        if settled:
            await take(settled)
        return refused

    async def _settle_at_once(
        self,
        by_org: dict[str, list[UsageEvent]],
        at_ms: int,
        take: Callable[[Mapping[str, Settled]], Awaitable[None]],
    ) -> tuple[set[str], dict[str, EncodedResults]]:
        """On one Redis, the settle calls of the organizations whose seats are issued go out as
        pipelines (`settle_pipelined`): a batch's hundred calls cost a few round trips instead
        of a hundred. The calls go in waves of about `wave_events` events (`ConsumerOptions`),
        the next wave sent before `take` handles the one answered, so the consumer sorts a
        wave's results and builds its rows while Redis settles the next.

        Returns the organizations taken, and those held back: answered unknown_org (their
        shard may have lost them: `_settle` decides). What was not settled (seats to issue
        first, an input error, a server error, Redis unavailable) goes one organization at a
        time, as before, with its retries, its input checks and its quarantine; settling again
        what a pipeline applied answers the stored results."""
        taken: set[str] = set()
        held: dict[str, EncodedResults] = {}
        engine = self._redis_engine
        if engine is None or engine.is_cluster or len(by_org) < 2:
            return taken, held
        seats = self.seats
        calls = [
            (org_id, events)
            for org_id, events in by_org.items()
            if events and (seats is None or seats.covers(org_id, max(e.time_ms for e in events)))
        ]
        waves = settle_waves(calls, self.options.wave_events)

        def send(
            wave: list[tuple[str, list[UsageEvent]]],
        ) -> asyncio.Task[list[EncodedResults | Exception]]:
            return asyncio.create_task(settle_pipelined(engine, wave, at_ms, trusted=self.trusted))

        pending = send(waves[0]) if waves else None
        try:
            for i, wave in enumerate(waves):
                assert pending is not None
                try:
                    answers = await pending
                except Exception as exc:  # each organization alone says what it is, and retries
                    log.warning("pipeline_failed", orgs=len(wave), error=repr(exc))
                    answers = None
                pending = send(waves[i + 1]) if i + 1 < len(waves) else None
                if answers is None:
                    continue
                ready: dict[str, Settled] = {}
                for (org_id, events), answer in zip(wave, answers, strict=True):
                    if isinstance(answer, Exception):
                        continue
                    if Reason.UNKNOWN_ORG.value in answer[1]:
                        held[org_id] = answer
                    else:
                        ready[org_id] = (events, answer)
                taken.update(ready)
                await take(ready)
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.wait({pending})
        return taken, held

    async def _settle_org(
        self, org_id: str, events: list[UsageEvent], at_ms: int, refused: dict[Identity, str]
    ) -> Settled:
        try:
            await self._issue_seats(org_id, events)
            return await self._settle_valid(org_id, events, at_ms, refused)
        except (Stopping, OffsetConflict):
            raise
        except Exception as exc:
            # Not transient (`_retry` retries those): this organization's state is what fails.
            # Set it aside rather than stop every organization's settling.
            if self._redis_engine is None:
                raise
            await self._retry(
                "quarantine",
                quarantine_org,
                self.store.pool,
                self._redis_engine.client,
                org_id,
                exc,
            )
            return events, ("x" * len(events), [ORG_QUARANTINED] * len(events))

    async def _issue_seats(self, org_id: str, events: list[UsageEvent]) -> None:
        """Before settling: the seats of the periods of these events are issued, so the first
        events of a period draw from its seats whether or not a scheduler ran."""
        seats = self.seats
        if seats is None or not events:
            return
        if seats.covers(org_id, max(ev.time_ms for ev in events)):
            return
        instants = sorted({ev.time_ms for ev in events})
        await self._retry("issue_seats", seats.ensure, org_id, instants)

    async def _settle_valid(
        self,
        org_id: str,
        events: list[UsageEvent],
        at_ms: int,
        refused: dict[Identity, str],
    ) -> Settled:
        try:
            return events, await self._retry(
                "settle_batch", self._engine_settle, org_id, events, at_ms
            )
        except EngineInputError:
            pass
        # The engine refuses a whole call for one bad event, before touching any state: settle
        # the others, dead-letter the ones it would refuse.
        kept: list[UsageEvent] = []
        for ev in events:
            try:
                validate_events(org_id, [ev], at_ms)
            except EngineInputError as exc:
                refused.setdefault((org_id, ev.key), str(exc))
            else:
                kept.append(ev)
        if not kept:
            return [], ("", [])
        try:
            return kept, await self._retry("settle_batch", self._engine_settle, org_id, kept, at_ms)
        except EngineInputError as exc:
            for ev in kept:
                refused.setdefault((org_id, ev.key), str(exc))
            return [], ("", [])

    async def _engine_settle(
        self, org_id: str, events: list[UsageEvent], at_ms: int
    ) -> EncodedResults:
        if self._redis_engine is not None:
            return await settle_encoded(
                self._redis_engine, org_id, events, at_ms, trusted=self.trusted
            )
        settled = await self.engine.settle_batch(org_id, events, at_ms, trusted=self.trusted)
        return encode_results(settled)

    async def _write(self, batch: Batch) -> None:
        t0 = time.perf_counter()
        try:
            inserted = await self._retry(
                "write_batch",
                self.store.write_rows,
                self.group_id,
                self.topic,
                batch.rows,
                batch.offsets,
            )
        except OffsetConflict as exc:
            log.warning("offsets_fenced", partitions=list(exc.partitions), seq=batch.seq)
            self._resync = True
            return
        except Stopping:
            log.warning("batch_abandoned", seq=batch.seq, records=batch.records)
            self._resync = True  # the batches queued behind it start from its offsets: drop them
            return
        self._committed_seq = batch.seq
        self._progress_at = time.monotonic()
        for advance in batch.offsets:
            self._written[advance.partition] = advance.next_offset
        t_write = time.perf_counter() - t0
        self.settled += inserted
        metrics.batch_written(inserted, t_write)
        self.batches += 1
        log.info(
            "batch",
            seq=batch.seq,
            records=batch.records,
            settled=inserted,
            duplicates=batch.duplicates + (len(batch.rows.settlements) - inserted),
            replayed=batch.replayed,
            dead=batch.dead,
            orgs=len(batch.keys_by_org),
            partitions={str(o.partition): o.next_offset for o in batch.offsets},
            **{k: round(v, 2) for k, v in batch.timings.items()},
            write_ms=round(t_write * 1000, 2),
            total_ms=round((time.perf_counter() - batch.polled_at) * 1000, 2),
        )
        for org_id, keys in batch.keys_by_org.items():
            pending = self._unconfirmed.get(org_id)
            if pending is None:
                self._unconfirmed[org_id] = keys
            else:
                pending.extend(keys)
        self._unconfirmed_keys += len(batch.rows.settlements)
        if (
            self._unconfirmed_keys >= self.options.confirm_max_keys
            or time.monotonic() - self._confirmed_at >= self.options.confirm_interval_s
        ):
            self._start_confirm()

    def _start_confirm(self) -> None:
        """Confirm the results written since the last confirm, in a task of its own (one at a
        time): confirming only frees Redis memory, so it runs beside the next batches, and many
        batches' keys go in one call per organization, all the calls in one pipeline."""
        if not self._unconfirmed:
            return
        keys_by_org, self._unconfirmed = self._unconfirmed, {}
        self._unconfirmed_keys = 0
        self._confirmed_at = time.monotonic()
        previous = self._confirm_task
        self._confirm_task = asyncio.create_task(self._confirm(keys_by_org, previous))

    async def _confirm(
        self, keys_by_org: dict[str, list[str]], previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        t0 = time.perf_counter()
        try:
            if self._redis_engine is not None:  # one round trip on one Redis
                await confirm_pipelined(self._redis_engine, keys_by_org)
            else:
                for org_id, keys in keys_by_org.items():
                    await self.engine.confirm(org_id, keys)
        except Exception as exc:
            # Unconfirmed results only cost Redis memory: PostgreSQL catches the duplicates.
            log.warning("confirm_failed", error=repr(exc))
            return
        log.debug(
            "confirmed",
            orgs=len(keys_by_org),
            keys=sum(len(k) for k in keys_by_org.values()),
            confirm_ms=round((time.perf_counter() - t0) * 1000, 2),
        )

    async def _finish_confirm(self, timeout_s: float | None = None) -> None:
        """Confirm everything written so far and wait for it (after `timeout_s`, give up: the
        results stay in Redis, which costs only memory)."""
        self._start_confirm()
        task, self._confirm_task = self._confirm_task, None
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                task.cancel()
                await asyncio.wait({task})

    async def _finish_write(self, timeout_s: float | None) -> None:
        """Write the queued batches and wait for every write; after `timeout_s` abandon what is
        still being written (cancel)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            await self._wait_write(left)
            if not self._writer_idle():
                continue  # another write started meanwhile: wait for it too
            if not self._queued or self._resync:
                break
            await self._flush_if_idle()
        if self._writer_idle():
            self._queued, self._queued_records = [], 0

    async def _wait_write(self, timeout_s: float | None) -> None:
        """Wait for the write in flight; after `timeout_s` abandon it (cancel)."""
        task = self._write_task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if not done:
            task.cancel()
            await asyncio.wait({task})
            log.warning("batch_abandoned", reason="timeout")
            self._resync = True
        elif not task.cancelled() and task.exception() is not None:
            log.error("write_failed", error=repr(task.exception()))
            self._resync = True
        if self._write_task is task:
            self._write_task = None

    async def _retry(self, what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`await fn(*args)`, retried with exponential backoff on transient failures until it
        succeeds or the consumer stops."""
        delay = self.options.retry_initial_s
        attempt = 0
        while True:
            try:
                return await fn(*args)
            except OffsetConflict:
                raise
            except TRANSIENT as exc:
                attempt += 1
                self.retries += 1
                if self._stopping.is_set():
                    raise Stopping from exc
                log.warning("retrying", stage=what, attempt=attempt, delay_s=delay, error=repr(exc))
                await wait_event(self._stopping, delay)
                delay = min(delay * 2, self.options.retry_max_s)


def install_signal_handlers(consumer: SettleConsumer) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, consumer.stop)


async def run_consumer(consumer: SettleConsumer, *, handle_signals: bool = True) -> None:
    if handle_signals:
        install_signal_handlers(consumer)
    await consumer.run()


# -- entry points --------------------------------------------------------------------------------


def build_consumer(
    settings: Settings,
    engine: Engine,
    *,
    options: ConsumerOptions | None = None,
    recovery: Recovery | None = None,
) -> SettleConsumer:
    """A consumer for `settings` (its servers must be filled in) settling through `engine`.
    With `recovery` it rebuilds a Redis that lost its data before settling into it."""
    if settings.kafka_bootstrap is None or settings.postgres_dsn is None:
        raise ValueError("settings need kafka_bootstrap and postgres_dsn")

    def decoder(raw: bytes, at_ms: int) -> DecodedEvent | EventError:
        return decode_event(raw, at_ms, settings)

    consumer = SettleConsumer(
        recovery=recovery,
        bootstrap=settings.kafka_bootstrap,
        topic=settings.usage_topic,
        dlq_topic=settings.dlq_topic,
        group_id=settings.consumer_group,
        engine=engine,
        store=SettlementStore(settings.postgres_dsn),
        decoder=decoder,
        options=options,
        # decode_event checks ids and instants as the engine does, and credits up to
        # `max_event_credits`: the engine may skip its own checks when that is within its range.
        trusted=settings.max_event_credits <= MAX_AMOUNT,
        offset_reset=settings.offset_reset,
        stall_after_s=settings.consumer_stall_s,
        session_timeout_ms=settings.consumer_session_timeout_ms,
    )
    consumer.max_event_credits = min(settings.max_event_credits, MAX_AMOUNT)
    return consumer


@contextlib.asynccontextmanager
async def settling(
    settings: Settings, *, options: ConsumerOptions | None = None
) -> AsyncIterator[SettleConsumer]:
    """The consumer `meter consume` runs: the Redis engine of `settings.redis_url`, guarded by
    `Recovery` (it rebuilds a Redis that lost its data before settling). Not yet running."""
    if settings.redis_url is None:
        raise ValueError("settings need redis_url")
    if settings.postgres_dsn is None:
        raise ValueError("settings need postgres_dsn")
    client = redis_connect(settings.redis_url)
    try:
        engine = RedisEngine(client, encoding=settings.member_encoding)
        recovery = Recovery(settings.postgres_dsn, client, engine)
        yield build_consumer(settings, engine, options=options, recovery=recovery)
    finally:
        await client.aclose()


async def consume(settings: Settings, *, options: ConsumerOptions | None = None) -> None:
    """Run one settlement consumer against the configured servers until stopped or cancelled
    (SIGTERM, SIGINT): the batch in flight is finished or abandoned and the group left."""
    async with settling(settings, options=options) as consumer:
        await consumer.run()


async def run_component(settings: Settings, services: Services) -> None:
    """The consumer as a `meter run` component."""
    await consume(settings)


def configure_consume(parser: argparse.ArgumentParser) -> Handler:
    """`meter consume`: run a settlement consumer (one consumer-group member)."""
    parser.add_argument("--batch", type=int, default=ConsumerOptions.batch_max_records)
    parser.add_argument("--wait-ms", type=int, default=ConsumerOptions.batch_max_wait_ms)

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.migrate import migrate
        from meter.services import provision

        options = ConsumerOptions(batch_max_records=args.batch, batch_max_wait_ms=args.wait_ms)
        from meter.roles import log_start

        async with provision(settings) as services:
            await migrate(services.postgres_dsn)
            resolved = services.apply(settings)
            log_start("consume", services)
            async with metrics.metrics_server(resolved), alerts.publishing(resolved):
                await consume(resolved, options=options)
        return 0

    return handle
