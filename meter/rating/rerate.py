"""`meter rerate --org ORG --from T1 --to T2 [--apply]`: settle a window again under the cards now
in force, after a corrected card version was published for it.

Each rated settlement of the organization with `T1 <= time < T2` (not voided) is rated again
with the card in force at its time, from the usage its `rating` recorded. A dry run (the default)
prints the difference per member. `--apply` records each change as a correction: a new usage
event (same source, same time, id `<id>:r<card version>`, attribute `corrects` = the old key) is
produced to the usage topic, then the old settlement is voided. In that order the correction
happens exactly once: a run stopped in between is finished by the next one (the old settlement
is still there, the event's key repeats and the consumer drops the copy); a settlement already
rated with the card in force, or voided, is left alone. Totals, exports and alerts follow the
void and the new settlement as they follow any.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg  # type: ignore[import-untyped]
import orjson

from meter.rating.book import CardBook, load_book, org_plans
from meter.rating.dimensions import Usage
from meter.rating.rate import Unrated, rate
from meter.store import ms_to_datetime
from schemas.events import (
    MAX_ID_CHARS,
    AttributeValue,
    encode_event,
    parse_time_ms,
    split_event_key,
)

if TYPE_CHECKING:
    from meter.cli import Handler
    from meter.settings import Settings

RATED_IN_WINDOW = """
SELECT s.key, s.member_id, (extract(epoch FROM s.event_time) * 1000)::bigint AS time_ms,
       s.credits, s.rating, s.attributes
FROM settlements s
WHERE s.org_id = $1 AND s.event_time >= $2 AND s.event_time < $3 AND s.rating IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM voids v
      WHERE v.org_id = $1 AND v.event_key = s.key COLLATE "default" AND v.voided
  )
ORDER BY s.event_time, s.key
"""


@dataclass(frozen=True, slots=True)
class Correction:
    """One settlement whose credits change under the card now in force."""

    key: str
    member_id: str
    time_ms: int
    usage: Usage
    old_credits: int
    new_credits: int
    old_version: int
    new_version: int
    attributes: dict[str, AttributeValue]

    def event_id(self) -> str:
        """The id of the correcting event: `<old id>:r<version>`, or a digest when too long."""
        _, old_id = split_event_key(self.key)
        suffix = f":r{self.new_version}"
        if len(old_id) + len(suffix) <= MAX_ID_CHARS:
            return old_id + suffix
        return hashlib.sha256(self.key.encode()).hexdigest()[:64] + suffix


def _usage_of(rating: Mapping[str, Any]) -> Usage:
    return Usage(
        rating["model"], {line["dimension"]: int(line["quantity"]) for line in rating["lines"]}
    )


def corrections(
    rows: Sequence[Mapping[str, Any]], book: CardBook, plan_id: str, org_id: str
) -> list[Correction]:
    """The settlements of `rows` (`RATED_IN_WINDOW`) whose card in force is not the one they
    were rated with, and whose credits or rating change under it. Pure."""
    out: list[Correction] = []
    for row in rows:
        rating = row["rating"]
        rating = orjson.loads(rating) if isinstance(rating, str | bytes) else rating
        card = book.card_for(plan_id, org_id, int(row["time_ms"]))
        if card is None or card.version == rating["card_version"]:
            continue
        usage = _usage_of(rating)
        try:
            new = rate(usage, card)
        except Unrated:
            continue  # the new card cannot price it: left as settled (reported by the dry run)
        attributes = row["attributes"]
        attributes = orjson.loads(attributes) if isinstance(attributes, str) else attributes or {}
        out.append(
            Correction(
                key=row["key"],
                member_id=row["member_id"],
                time_ms=int(row["time_ms"]),
                usage=usage,
                old_credits=int(row["credits"]),
                new_credits=new.credits,
                old_version=int(rating["card_version"]),
                new_version=card.version,
                attributes={**attributes, "corrects": row["key"][:256]},
            )
        )
    return out


def differences(found: Sequence[Correction]) -> dict[str, tuple[int, int]]:
    """Per member: (credits as settled, credits under the cards in force)."""
    out: dict[str, tuple[int, int]] = {}
    for c in found:
        old, new = out.get(c.member_id, (0, 0))
        out[c.member_id] = (old + c.old_credits, new + c.new_credits)
    return out


async def find(pool: asyncpg.Pool, org_id: str, from_ms: int, to_ms: int) -> list[Correction]:
    plan_id = (await org_plans(pool, [org_id])).get(org_id)
    if plan_id is None:
        raise LookupError(f"organization {org_id!r} is not known")
    book = await load_book(pool)
    rows = await pool.fetch(RATED_IN_WINDOW, org_id, ms_to_datetime(from_ms), ms_to_datetime(to_ms))
    return corrections(rows, book, plan_id, org_id)


async def apply(
    found: Sequence[Correction],
    org_id: str,
    *,
    produce: Any,
    void: Any,
) -> int:
    """Record each correction: `await produce(key, value)` its event, then `await void(org_id,
    old key)`. Returns how many."""
    for c in found:
        source, _ = split_event_key(c.key)
        value = encode_event(
            event_id=c.event_id(),
            source=source,
            org_id=org_id,
            member_id=c.member_id,
            time_ms=c.time_ms,
            usage=c.usage,
            attributes=c.attributes,
        )
        await produce(org_id.encode(), value)
        await void(org_id, c.key)
    return len(found)


def _instant(text: str) -> int:
    return parse_time_ms(text if len(text) > 10 else text + "T00:00:00Z")


def configure(parser: argparse.ArgumentParser) -> Handler:
    """`meter rerate`: re-rate an organization's window under the cards now in force."""
    parser.add_argument("--org", required=True)
    parser.add_argument("--from", dest="start", required=True, help="RFC 3339 or YYYY-MM-DD")
    parser.add_argument("--to", dest="end", required=True, help="RFC 3339 or YYYY-MM-DD")
    parser.add_argument("--apply", action="store_true", help="record the corrections")

    async def handle(args: argparse.Namespace, settings: Settings) -> int:
        from meter.migrate import migrate
        from meter.services import provision

        only = {"kafka", "redis", "postgres"} if args.apply else {"postgres"}
        async with provision(settings, only=only) as services:
            await migrate(services.postgres_dsn)
            pool = await asyncpg.create_pool(services.postgres_dsn, min_size=1, max_size=2)
            try:
                found = await find(pool, args.org, _instant(args.start), _instant(args.end))
                for member, (old, new) in sorted(differences(found).items()):
                    print(f"{member}\t{old}\t{new}\t{new - old:+d}")
                print(f"{len(found)} settlements to correct", file=sys.stderr)
                if args.apply and found:
                    await _apply(services.apply(settings), pool, args.org, found)
            finally:
                await pool.close()
        return 0

    return handle


async def _apply(
    settings: Settings, pool: asyncpg.Pool, org_id: str, found: Sequence[Correction]
) -> None:
    from aiokafka import AIOKafkaProducer

    from meter import kafka
    from meter.admin.service import AdminService
    from meter.engine.redis import RedisEngine
    from meter.redis_client import connect as redis_connect

    assert settings.redis_url and settings.kafka_bootstrap
    client = redis_connect(settings.redis_url)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", **kafka.client_options()
    )
    await producer.start()
    try:
        admin = AdminService(pool, RedisEngine(client, encoding=settings.member_encoding))

        async def produce(key: bytes, value: bytes) -> None:
            await producer.send_and_wait(settings.usage_topic, value=value, key=key)

        async def void(org: str, key: str) -> None:
            await admin.void(org, key, "meter rerate")

        done = await apply(found, org_id, produce=produce, void=void)
        print(f"{done} corrections recorded", file=sys.stderr)
    finally:
        await producer.stop()
        await client.aclose()
