"""The credit engine on Redis: the rules of `README.md` as Lua, atomic per organization.

The engine is one Redis Functions library (`library()`): the helpers of `lua/lib.lua` defined
once when the library loads, then each script of `lua/` registered as a function taking
`KEYS`/`ARGV` (flag `no-writes` for the read-only ones, called with FCALL_RO). The library's
name and its functions' names carry a short hash of its source, so a newer meter loads a new
library beside the one an older meter still calls during a rolling deploy (`FUNCTION LOAD
REPLACE` replaces only the same version). It is loaded at first use, and again whenever the
server answers that a function does not exist (a Redis restarted empty, a promoted replica, the
new owner of a migrated slot: on a Redis Cluster, FUNCTION LOAD goes to every primary). Every
key of an organization carries the hash tag `{org_id}` (layout in `lua/lib.lua`), so one
organization lives in one Redis Cluster slot and each call is one function on one shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from meter.engine.model import (
    hold_ttl,
    refused,
    validate_billing_group,
    validate_events,
    validate_grant,
    validate_member,
    validate_org,
    validate_restore,
    validate_void_settlement,
)
from meter.engine.types import (
    UNASSIGNED,
    BillingGroupConfig,
    CheckResult,
    EngineInputError,
    Grant,
    Kind,
    Line,
    MemberConfig,
    MemberEncoding,
    OrgConfig,
    Period,
    Reason,
    Settlement,
    UsageEvent,
    VoidResult,
    check_amount,
    check_id,
    check_instant,
    check_org_id,
)

SEP = "\x1f"
KIND_CODE = {Kind.SEAT: "s", Kind.PERSONAL: "p", Kind.SHARED: "h", Kind.ON_DEMAND: "o"}
CODE_KIND = {code: kind for kind, code in KIND_CODE.items()}
SCRIPTS = (
    "put_org",
    "put_member",
    "remove_member",
    "put_billing_group",
    "delete_billing_group",
    "apply_grant",
    "revoke_grant",
    "settle_batch",
    "confirm",
    "check",
    "reserve",
    "release",
    "void",
    "balances",
    "usage",
    "restore",
    "prune",
)
MAX_BATCH = 2000
"""Events per script call; longer batches are split (each part is still atomic)."""

USAGE_FIELDS = {"a": "member:", "s": "member_shared:", "g": "group:"}
COUNTER_FIELDS = {name: code for code, name in USAGE_FIELDS.items()}
REBUILDING = "b"
"""Field of the org's config hash set while the org is rebuilt: its state is all there (the
org's loss marker, lost with its shard) iff the field `c` is set and this one is not."""


def org_key(org_id: str) -> str:
    """The organization's config key; every other key of the org shares its prefix and slot."""
    return f"meter:{{{org_id}}}:o"


async def org_present(redis: aioredis.Redis, org_id: str) -> bool:
    """Whether the organization's state is all there: config set, no rebuild in progress (the
    test every script makes, `load_org` in `lua/lib.lua`)."""
    config, rebuilding = await redis.hmget(org_key(org_id), ["c", REBUILDING])
    return config is not None and rebuilding is None


async def begin_rebuild(redis: aioredis.Redis, org_id: str) -> None:
    """Mark the organization as being rebuilt: scripts take it for absent until `end_rebuild`."""
    await redis.hset(org_key(org_id), REBUILDING, "1")


async def end_rebuild(redis: aioredis.Redis, org_id: str) -> None:
    """The organization's state is all there again."""
    await redis.hdel(org_key(org_id), REBUILDING)


def lua_file(name: str) -> str:
    """The text of `lua/<name>.lua`."""
    return (resources.files("meter.engine") / "lua" / f"{name}.lua").read_text()


FLAGS = {"balances": "no-writes", "usage": "no-writes", "check": "allow-oom"}
"""Flags of the functions. A function without `no-writes` is refused whole by a Redis over its
`maxmemory`; a check still answers there (its only writes drop expired holds and cache the
current period), as it did as a script that wrote nothing."""
READ_ONLY = frozenset(name for name, flag in FLAGS.items() if flag == "no-writes")
"""Functions that write nothing, called with FCALL_RO."""
_VERSION = "@version@"
_GLOBALS = "string, table, math, tonumber, unpack, redis, pairs, ipairs, struct"
_PRELUDE = f"""#!lua name=meter_{_VERSION}
-- The globals the engine uses, bound as upvalues by each function's first call: a library's
-- global lookups go through a metatable (a third slower), and its top level sees only the
-- loading API (`redis.register_function`), so they cannot be bound here.
local register_function = redis.register_function
local function runtime_globals() return {_GLOBALS} end
local {_GLOBALS}
local function bind_globals() {_GLOBALS} = runtime_globals() end
-- The encoding of the members this library writes (lib.lua's layout of m): it reads both.
local WRITE_BINARY = @binary@
"""


@dataclass(frozen=True)
class Library:
    """The engine as one Redis Functions library."""

    name: str
    source: str
    functions: Mapping[str, str]
    """Script name -> the name it is registered under."""


@cache
def library(encoding: MemberEncoding = "binary") -> Library:
    """The library: `lua/lib.lua` once, then each script of `SCRIPTS` as a function, writing
    members in `encoding`. Its name, and each function's, carry the first 12 hex digits of the
    SHA-1 of its source, so the two encodings are two libraries."""
    if encoding not in ("binary", "text"):
        raise ValueError(f"unknown member encoding {encoding!r}")
    prelude = _PRELUDE.replace("@binary@", "true" if encoding == "binary" else "false")
    parts = [prelude, lua_file("lib")]
    for name in SCRIPTS:
        flags = f"'{FLAGS[name]}'" if name in FLAGS else ""
        parts.append(
            f"\nregister_function{{function_name='meter_{name}_{_VERSION}', flags={{{flags}}},"
            f" callback=function(KEYS, ARGV) if not redis then bind_globals() end\n"
            f"{lua_file(name)}\nend}}\n"
        )
    template = "".join(parts)
    version = hashlib.sha1(template.encode()).hexdigest()[:12]
    return Library(
        name=f"meter_{version}",
        source=template.replace(_VERSION, version),
        functions={name: f"meter_{name}_{version}" for name in SCRIPTS},
    )


def function_missing(exc: ResponseError) -> bool:
    """Whether the server answered that the function called does not exist."""
    return str(exc).removeprefix("ERR ").startswith("Function not found")


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _opt(value: int | None) -> str:
    return "" if value is None else str(value)


def _opt_int(value: str) -> int | None:
    return None if value == "" else int(value)


def encode_settlement(s: Settlement) -> str:
    """A settlement in the stored encoding of `settle_batch.lua` ("" for one that did not
    settle)."""
    if s.period is None or s.reason is not None:
        return ""
    flags = (1 if s.member_limited else 0) + (2 if s.group_limited else 0) + (4 if s.late else 0)
    parts = [
        s.member_id, str(s.credits), str(s.time_ms), str(s.period.start_ms), str(s.period.end_ms),
        s.billing_group, str(s.unfunded), str(flags), s.reservation_id or "",
    ]  # fmt: skip
    for line in s.lines:
        parts += [line.bucket_id, KIND_CODE[line.kind], str(line.amount)]
    return SEP.join(parts)


EncodedResults = tuple[str, list[str]]
"""Results of `RedisEngine.settle_encoded`: one status letter per event and one body per event."""


def decode_settlement(key: str, org_id: str, enc: str, *, duplicate: bool) -> Settlement:
    f = enc.split(SEP)
    flags = int(f[7])
    lines = tuple(Line(f[i], CODE_KIND[f[i + 1]], int(f[i + 2])) for i in range(9, len(f) - 2, 3))
    return Settlement(
        key=key,
        org_id=org_id,
        member_id=f[0],
        credits=int(f[1]),
        time_ms=int(f[2]),
        period=Period(int(f[3]), int(f[4])),
        billing_group=f[5],
        lines=lines,
        unfunded=int(f[6]),
        member_limited=bool(flags & 1),
        group_limited=bool(flags & 2),
        late=bool(flags & 4),
        reservation_id=f[8] or None,
        duplicate=duplicate,
    )


def _lines(flat: Sequence[str]) -> tuple[Line, ...]:
    return tuple(
        Line(flat[i], CODE_KIND[flat[i + 1]], int(flat[i + 2])) for i in range(0, len(flat), 3)
    )


def _check_result(reply: Sequence[Any]) -> CheckResult:
    r = [_str(x) for x in reply]
    if len(r) == 1:
        return CheckResult(False, Reason(r[0]))
    available = {
        Kind.SEAT: int(r[1]),
        Kind.PERSONAL: int(r[2]),
        Kind.SHARED: int(r[3]),
        Kind.ON_DEMAND: int(r[4]),
    }
    return CheckResult(
        allowed=r[0] == "",
        reason=Reason(r[0]) if r[0] else None,
        available=available,
        member_remaining=_opt_int(r[5]),
        group_remaining=_opt_int(r[6]),
        period_end_ms=int(r[7]),
        reservation_id=r[8] if len(r) > 8 else None,
        reservation_expires_ms=int(r[9]) if len(r) > 9 else None,
    )


class RedisEngine:
    """`meter.engine.types.Engine` on one Redis (or a Redis Cluster with one slot per org)."""

    def __init__(self, redis: aioredis.Redis, *, encoding: MemberEncoding = "binary") -> None:
        self._redis = redis
        self._loaded = False
        self.encoding: MemberEncoding = encoding
        self.library = library(encoding)
        """The functions it calls: those of its member encoding."""

    async def load_scripts(self) -> None:
        """FUNCTION LOAD REPLACE the library (every primary of a cluster); done lazily on first
        use, and again when the server answers that a function does not exist."""
        await self._redis.function_load(self.library.source, replace=True)
        self._loaded = True

    async def _call(self, name: str, org_id: str, *args: str | int) -> Any:
        if not self._loaded:
            await self.load_scripts()
        call = self._redis.fcall_ro if name in READ_ONLY else self._redis.fcall
        function = self.library.functions[name]
        key = org_key(org_id)
        try:
            return await call(function, 1, key, *args)
        except ResponseError as exc:
            if not function_missing(exc):
                raise
        await self.load_scripts()
        return await call(function, 1, key, *args)

    # -- configuration -------------------------------------------------------------------------

    async def put_org(self, org: OrgConfig, *, create: bool = True) -> None:
        validate_org(org)
        await self._call(
            "put_org", org.org_id, org.status.value, org.period_kind.value, org.anchor_ms,
            org.rolling_days, org.limit_policy.value, _opt(org.default_member_limit),
            org.grace_ms, "1" if create else "0",
        )  # fmt: skip

    async def put_member(self, member: MemberConfig) -> None:
        validate_member(member)
        await self._call(
            "put_member", member.org_id, member.member_id, "1" if member.seated else "0",
            _opt(member.member_limit), member.billing_group,
        )  # fmt: skip

    async def remove_member(self, org_id: str, member_id: str) -> None:
        check_org_id(org_id)
        check_id("member_id", member_id)
        await self._call("remove_member", org_id, member_id)

    async def put_billing_group(self, group: BillingGroupConfig) -> None:
        validate_billing_group(group)
        await self._call("put_billing_group", group.org_id, group.group_id, _opt(group.limit))

    async def delete_billing_group(self, org_id: str, group_id: str) -> None:
        check_org_id(org_id)
        check_id("group_id", group_id)
        await self._call("delete_billing_group", org_id, group_id)

    async def apply_grant(self, grant: Grant) -> bool:
        validate_grant(grant)
        added = await self._call(
            "apply_grant", grant.org_id, grant.member_id or "", grant.bucket_id,
            KIND_CODE[grant.kind], grant.valid_from_ms, grant.expires_at_ms, grant.granted_at_ms,
            grant.amount,
        )  # fmt: skip
        return bool(added)

    async def revoke_grant(
        self, org_id: str, member_id: str | None, bucket_id: str, now_ms: int
    ) -> int | None:
        check_org_id(org_id)
        if member_id is not None:
            check_id("member_id", member_id)
        check_id("bucket_id", bucket_id)
        check_instant("now_ms", now_ms)
        was = await self._call("revoke_grant", org_id, member_id or "", bucket_id, now_ms)
        return None if was is None else int(_str(was))

    # -- settling ------------------------------------------------------------------------------

    async def settle_batch(
        self,
        org_id: str,
        events: Sequence[UsageEvent],
        now_ms: int,
        *,
        trusted: bool = False,
    ) -> list[Settlement]:
        status, bodies = await settle_encoded(self, org_id, events, now_ms, trusted=trusted)
        out: list[Settlement] = []
        for ev, tag, body in zip(events, status, bodies, strict=True):
            if tag == "x":
                out.append(refused(ev, Reason(body)))
            else:
                out.append(decode_settlement(ev.key, org_id, body, duplicate=tag == "d"))
        return out

    async def confirm(self, org_id: str, keys: Sequence[str]) -> None:
        check_org_id(org_id)
        if keys:
            await self._call("confirm", org_id, _packed_keys(keys))

    # -- checks and reservations ---------------------------------------------------------------

    async def check(self, org_id: str, member_id: str, credits: int, now_ms: int) -> CheckResult:
        check_org_id(org_id)
        check_id("member_id", member_id)
        check_amount("credits", credits)
        check_instant("now_ms", now_ms)
        return _check_result(await self._call("check", org_id, now_ms, member_id, credits))

    async def reserve(
        self,
        org_id: str,
        member_id: str,
        credits: int,
        now_ms: int,
        reservation_id: str,
        ttl_ms: int = 60_000,
    ) -> CheckResult:
        check_org_id(org_id)
        check_id("member_id", member_id)
        check_amount("credits", credits)
        check_instant("now_ms", now_ms)
        check_id("reservation_id", reservation_id)
        ttl = hold_ttl(ttl_ms)
        reply = await self._call("reserve", org_id, now_ms, member_id, credits, reservation_id, ttl)
        if _str(reply[0]) == "held":
            return CheckResult(
                True, None, reservation_id=reservation_id,
                reservation_expires_ms=int(_str(reply[1])),
            )  # fmt: skip
        return _check_result(reply)

    async def release(self, org_id: str, reservation_id: str, now_ms: int) -> bool:
        check_org_id(org_id)
        check_id("reservation_id", reservation_id)
        check_instant("now_ms", now_ms)
        return bool(await self._call("release", org_id, now_ms, reservation_id))

    # -- corrections ---------------------------------------------------------------------------

    async def void(
        self, org_id: str, key: str, now_ms: int, settlement: Settlement | None = None
    ) -> VoidResult:
        check_org_id(org_id)
        check_instant("now_ms", now_ms)
        validate_void_settlement(org_id, key, settlement)
        given = "" if settlement is None else encode_settlement(settlement)
        reply = [_str(x) for x in await self._call("void", org_id, now_ms, key, given)]
        if reply[0] == "none":
            return VoidResult(key, False)
        return VoidResult(key, True, _lines(reply[1:]), duplicate=reply[0] == "dup")

    # -- recovery and upkeep -------------------------------------------------------------------

    async def restore(
        self, org_id: str, balances: Mapping[str, int], usage: Mapping[str, int], now_ms: int
    ) -> None:
        check_org_id(org_id)
        check_instant("now_ms", now_ms)
        validate_restore(balances, usage)
        args: list[str | int] = [now_ms, len(balances)]
        for bucket_id, left in balances.items():
            args += [bucket_id, left]
        for name, value in usage.items():
            args += [counter_field(name), value]
        reply = [_str(x) for x in await self._call("restore", org_id, *args)]
        if reply:
            problem, detail = reply
            raise EngineInputError(f"restore: {problem.replace('_', ' ')} {detail!r}")

    async def prune(self, org_id: str, now_ms: int) -> int:
        check_org_id(org_id)
        check_instant("now_ms", now_ms)
        return int(await self._call("prune", org_id, now_ms))

    async def has_org(self, org_id: str) -> bool:
        check_org_id(org_id)
        return await org_present(self._redis, org_id)

    @property
    def client(self) -> aioredis.Redis:
        """The Redis client the engine calls through."""
        return self._redis

    @property
    def is_cluster(self) -> bool:
        """Whether the client is a Redis Cluster's (calls go to the primaries owning each org)."""
        return isinstance(self._redis, RedisCluster)

    # -- reading -------------------------------------------------------------------------------

    async def balances(self, org_id: str, now_ms: int) -> dict[str, int]:
        check_org_id(org_id)
        flat = [_str(x) for x in await self._call("balances", org_id)]
        return {flat[i]: int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def usage(self, org_id: str, now_ms: int) -> dict[str, int]:
        check_org_id(org_id)
        check_instant("now_ms", now_ms)
        flat = [_str(x) for x in await self._call("usage", org_id, now_ms)]
        out: dict[str, int] = {}
        for i in range(0, len(flat), 2):
            field, value = flat[i], int(flat[i + 1])
            if not value:
                continue
            if field in ("d", "u"):
                out["drawn" if field == "d" else "unfunded"] = value
            else:
                out[USAGE_FIELDS[field[0]] + field[1:]] = value
        return out


def counter_field(name: str) -> str:
    """The Redis counter field (lib.lua `c:<start>`) of a counter name of `usage()`."""
    if name == "drawn":
        return "d"
    if name == "unfunded":
        return "u"
    prefix, _, rest = name.partition(":")
    return COUNTER_FIELDS[prefix + ":"] + rest


def _check_settle(org_id: str, events: Sequence[UsageEvent], now_ms: int, trusted: bool) -> None:
    if trusted:
        check_org_id(org_id)
        check_instant("now_ms", now_ms)
    else:
        validate_events(org_id, events, now_ms)


def _packed_parts(events: Sequence[UsageEvent]) -> list[str]:
    """The events in settle_batch's argument encoding, at most `MAX_BATCH` a call."""
    return [
        "".join(
            [
                f"{ev.key}\x1f{ev.member_id}\x1f{ev.credits}\x1f{ev.time_ms}\x1f"
                f"{ev.reservation_id or ''}\x1e"
                for ev in events[first : first + MAX_BATCH]
            ]
        )
        for first in range(0, len(events), MAX_BATCH)
    ]


def _packed_keys(keys: Sequence[str]) -> str:
    """Settlement keys in confirm's argument encoding."""
    packed = "".join([f"{key}\x1e" for key in keys])
    if packed.count("\x1e") != len(keys):
        raise EngineInputError("keys must not contain control characters")
    return packed


def _joined(n_events: int, replies: Sequence[Any]) -> EncodedResults:
    """The replies of one organization's settle_batch calls, as one status and body list."""
    statuses: list[str] = []
    bodies: list[str] = []
    for reply in replies:
        statuses.append(_str(reply[0]))
        bodies += [b.decode() if type(b) is bytes else str(b) for b in reply[1:]]
    status = "".join(statuses)
    if len(status) != n_events or len(bodies) != n_events:
        raise RuntimeError("settle_batch answered for a different number of events")
    return status, bodies


async def settle_encoded(
    engine: RedisEngine,
    org_id: str,
    events: Sequence[UsageEvent],
    now_ms: int,
    *,
    trusted: bool = False,
) -> EncodedResults:
    """`engine.settle_batch` with the results left as the engine stores them: a status letter per
    event ("n" settled now, "d" the stored result of an earlier settlement, "x" refused) and
    a body per event (the reason for "x", else the `encode_settlement` text)."""
    _check_settle(org_id, events, now_ms, trusted)
    replies = [
        await engine._call("settle_batch", org_id, now_ms, packed)
        for packed in _packed_parts(events)
    ]
    return _joined(len(events), replies)


async def settle_pipelined(
    engine: RedisEngine,
    calls: Sequence[tuple[str, Sequence[UsageEvent]]],
    now_ms: int,
    *,
    trusted: bool = False,
) -> list[EncodedResults | Exception]:
    """`settle_encoded` for several organizations in one round trip: their settle_batch calls go
    to the server as one pipeline (no transaction: each call is atomic on its own, as it is
    alone). Answers, in the order of `calls`, each organization's results or what failed it: the
    input error of an event, or the server's error (a function the server has forgotten
    reloads the library first). An organization answered with an error may have had some of
    its calls applied; settling it again answers those as stored results ("d").

    The pipeline needs one server: on a Redis Cluster this is `settle_encoded` per organization.
    A connection lost or refused fails the whole call, as one command's would."""
    if engine.is_cluster:
        out: list[EncodedResults | Exception] = []
        for org_id, events in calls:
            try:
                out.append(await settle_encoded(engine, org_id, events, now_ms, trusted=trusted))
            except (EngineInputError, ResponseError) as exc:
                out.append(exc)
        return out
    if not engine._loaded:
        await engine.load_scripts()
    function = engine.library.functions["settle_batch"]
    answers: list[EncodedResults | Exception] = []
    sent: list[tuple[int, int]] = []  # per call: its index in answers, its number of commands
    pipe = engine.client.pipeline(transaction=False)
    for org_id, events in calls:
        try:
            _check_settle(org_id, events, now_ms, trusted)
        except EngineInputError as exc:
            answers.append(exc)
            continue
        parts = _packed_parts(events)
        for packed in parts:
            pipe.fcall(function, 1, org_key(org_id), now_ms, packed)
        sent.append((len(answers), len(parts)))
        answers.append(("", []))
    if not sent:
        return answers
    replies = await pipe.execute(raise_on_error=False)
    at = 0
    forgotten = False
    for index, n in sent:
        mine, at = replies[at : at + n], at + n
        failed = next((r for r in mine if isinstance(r, Exception)), None)
        if failed is None:
            try:
                answers[index] = _joined(len(calls[index][1]), mine)
            except RuntimeError as exc:
                answers[index] = exc
        else:
            answers[index] = failed
            forgotten = forgotten or (
                isinstance(failed, ResponseError) and function_missing(failed)
            )
    if forgotten:
        await engine.load_scripts()
    return answers


async def confirm_pipelined(engine: RedisEngine, keys_by_org: Mapping[str, Sequence[str]]) -> None:
    """`engine.confirm` for several organizations in one round trip, as `settle_pipelined`
    settles them (on a Redis Cluster, one call per organization). Raises the first error an
    organization's call met (the others are still applied): an input error before anything is
    sent, or the server's error (a function the server has forgotten reloads the library
    first, and the call is then made again)."""
    calls = []
    for org_id, keys in keys_by_org.items():
        check_org_id(org_id)
        if keys:
            calls.append((org_id, _packed_keys(keys)))
    if not calls:
        return
    if engine.is_cluster:
        first: Exception | None = None
        for org_id, packed in calls:
            try:
                await engine._call("confirm", org_id, packed)
            except RedisError as exc:
                first = first or exc
        if first is not None:
            raise first
        return
    if not engine._loaded:
        await engine.load_scripts()
    function = engine.library.functions["confirm"]
    for attempt in range(2):
        pipe = engine.client.pipeline(transaction=False)
        for org_id, packed in calls:
            pipe.fcall(function, 1, org_key(org_id), packed)
        replies = await pipe.execute(raise_on_error=False)
        failed = next((r for r in replies if isinstance(r, Exception)), None)
        if failed is None:
            return
        if attempt or not (isinstance(failed, ResponseError) and function_missing(failed)):
            raise failed
        await engine.load_scripts()


__all__ = [
    "UNASSIGNED",
    "RedisEngine",
    "begin_rebuild",
    "confirm_pipelined",
    "decode_settlement",
    "encode_settlement",
    "end_rebuild",
    "org_key",
    "org_present",
    "settle_encoded",
    "settle_pipelined",
]
