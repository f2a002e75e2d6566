"""Each Lua function of the engine run directly against Redis, asserting the keys it leaves
behind."""

from __future__ import annotations

import struct
from typing import Any

import pytest
import redis.asyncio as aioredis

from meter.engine.redis import SEP, library, org_key
from meter.engine.types import MemberEncoding

ORG = "acme"
P = "meter:{acme}:"
NOW = 1_710_000_000_000
ANCHOR = 1_709_251_200_000  # 2024-03-01
MARCH_END = 1_711_929_600_000  # 2024-04-01


async def run(
    redis: aioredis.Redis, name: str, *args: Any, encoding: MemberEncoding = "binary"
) -> Any:
    lib = library(encoding)
    await redis.function_load(lib.source, replace=True)
    return await redis.fcall(lib.functions[name], 1, org_key(ORG), *args)


Config = tuple[bool, int | None, str, bool]
"""A member's config as stored: seated, limit (None: the org's default), group, removed."""
Bucket = tuple[str, int, int, int, str, int]
"""A bucket as stored: kind letter, valid from, expires at, granted at, id, credits left."""


def decode_owner(value: bytes) -> tuple[Config | None, list[Bucket]]:
    """A member's (or the shared pool's) value, in either encoding of lib.lua, read here
    independently of the Lua that writes it."""
    if value[:1] == b"\x02":
        flags, limit, group_len = struct.unpack_from("<BqI", value, 1)
        at = 14
        group = value[at : at + group_len].decode()
        (n,) = struct.unpack_from("<I", value, at + group_len)
        at += group_len + 4
        lefts = struct.unpack_from(f"<{n}q", value, at)
        at += 8 * n
        buckets = []
        for left in lefts:
            kind = value[at : at + 1].decode()
            start, end, granted, id_len = struct.unpack_from("<qqqI", value, at + 1)
            at += 29
            buckets.append(
                (
                    kind,
                    int(start),
                    int(end),
                    int(granted),
                    value[at : at + id_len].decode(),
                    int(left),
                )
            )
            at += id_len
        assert at == len(value)
        config = (bool(flags & 2), int(limit) if flags & 8 else None, group, bool(flags & 4))
        return (config if flags & 1 else None), buckets
    text = value.decode()
    static, lefts_text = text.split("\x1d")
    config_text, *heads = static.split("\x1e")
    text_config = None
    if config_text:
        seated, limit_text, group, removed = config_text.split(SEP)
        text_config = (
            seated == "1",
            int(limit_text) if limit_text else None,
            group,
            removed == "1",
        )
    lefts_list = lefts_text.split(SEP) if heads else []
    out = []
    for head, left_text in zip(heads, lefts_list, strict=True):
        start_text, end_text, granted_text, bucket_id = head[1:].split(SEP)
        out.append((head[0], int(start_text), int(end_text), int(granted_text), bucket_id,
                    int(left_text)))  # fmt: skip
    return text_config, out


async def member_value(redis: aioredis.Redis, member_id: str) -> bytes:
    value = await redis.hget(P + "m", member_id)
    assert value is not None
    return bytes(value)


def packed(*events: tuple[Any, ...]) -> str:
    """The events argument of settle_batch.lua."""
    return "".join(SEP.join(str(f) for f in ev) + "\x1e" for ev in events)


async def hash_of(redis: aioredis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await redis.hgetall(key)).items()}


async def setup(redis: aioredis.Redis, encoding: MemberEncoding = "binary") -> None:
    await run(redis, "put_org", "active", "monthly", ANCHOR, 30, "all", "", 0, encoding=encoding)
    await run(redis, "put_billing_group", "team", 500, encoding=encoding)
    await run(redis, "put_member", "ann", "1", "", "team", encoding=encoding)
    await run(redis, "apply_grant", "ann", "seat", "s", ANCHOR, MARCH_END, ANCHOR, 100,
              encoding=encoding)  # fmt: skip
    await run(redis, "apply_grant", "", "pool", "h", ANCHOR, MARCH_END + 1, ANCHOR, 1000,
              encoding=encoding)  # fmt: skip


async def test_config_scripts_text(redis: aioredis.Redis) -> None:
    """The text library writes exactly what earlier releases wrote and read."""
    await setup(redis, "text")
    assert await hash_of(redis, P + "o") == {
        "c": SEP.join(["active", "monthly", str(ANCHOR), "30", "all", "", "0"]),
    }
    assert await hash_of(redis, P + "g") == {"team": "500"}
    seat = "\x1es" + SEP.join([str(ANCHOR), str(MARCH_END), str(ANCHOR), "seat"])
    assert await hash_of(redis, P + "m") == {
        "ann": SEP.join(["1", "", "team", ""]) + seat + "\x1d100"
    }  # fmt: skip
    pool = "\x1eh" + SEP.join([str(ANCHOR), str(MARCH_END + 1), str(ANCHOR), "pool"])
    assert await redis.get(P + "sh") == (pool + "\x1d1000").encode()
    await grant_more(redis, "text")
    value = (await hash_of(redis, P + "m"))["ann"]
    static, lefts = value.split("\x1d")
    assert [b.rsplit(SEP, 1)[1] for b in static.split("\x1e")[1:]] == [
        "early", "older", "seas", "seat", "addon",
    ]  # fmt: skip
    assert lefts == SEP.join(["1", "3", "4", "100", "2"])
    assert await run(redis, "remove_member", "ann", encoding="text") == 1
    assert (await hash_of(redis, P + "m"))["ann"].startswith(SEP.join(["1", "", "team", "1"]))
    await run(redis, "put_member", "ann", "0", "7", "", encoding="text")
    assert (await hash_of(redis, P + "m"))["ann"] == SEP.join(["0", "7", "", ""]) + value[
        value.index("\x1e") :
    ]


async def grant_more(redis: aioredis.Redis, encoding: MemberEncoding) -> None:
    assert await run(redis, "apply_grant", "ann", "seat", "s", 0, 1, 0, 5, encoding=encoding) == 0
    # Buckets are kept in burn-down order (kind, expiry, grant, id), credits left in that order.
    for grant in [
        ("early", "s", ANCHOR, MARCH_END - 1, ANCHOR, 1),
        ("addon", "p", ANCHOR, MARCH_END - 2, ANCHOR, 2),
        ("older", "s", ANCHOR, MARCH_END, ANCHOR - 1, 3),
        ("seas", "s", ANCHOR, MARCH_END, ANCHOR, 4),
    ]:
        assert await run(redis, "apply_grant", "ann", *grant, encoding=encoding) == 1


async def test_config_scripts_binary(redis: aioredis.Redis) -> None:
    await setup(redis)
    assert await hash_of(redis, P + "o") == {
        "c": SEP.join(["active", "monthly", str(ANCHOR), "30", "all", "", "0"]),
    }
    assert await hash_of(redis, P + "g") == {"team": "500"}
    ann = await member_value(redis, "ann")
    assert ann[:1] == b"\x02"
    assert decode_owner(ann) == (
        (True, None, "team", False), [("s", ANCHOR, MARCH_END, ANCHOR, "seat", 100)]
    )  # fmt: skip
    pool = await redis.get(P + "sh")
    assert pool[:1] == b"\x02"
    assert decode_owner(pool) == (None, [("h", ANCHOR, MARCH_END + 1, ANCHOR, "pool", 1000)])
    await grant_more(redis, "binary")
    config, buckets = decode_owner(await member_value(redis, "ann"))
    assert config == (True, None, "team", False)
    assert [(b[4], b[5]) for b in buckets] == [
        ("early", 1), ("older", 3), ("seas", 4), ("seat", 100), ("addon", 2),
    ]  # fmt: skip
    assert await run(redis, "remove_member", "ann") == 1
    assert decode_owner(await member_value(redis, "ann")) == ((True, None, "team", True), buckets)
    await run(redis, "put_member", "ann", "0", "7", "")
    assert decode_owner(await member_value(redis, "ann")) == ((False, 7, "", False), buckets)
    assert await run(redis, "remove_member", "bob") == 0
    assert await run(redis, "delete_billing_group", "team") == 1
    assert await redis.exists(P + "g") == 0
    assert sorted(await redis.keys("*")) == sorted(k.encode() for k in [P + "o", P + "m", P + "sh"])


@pytest.mark.parametrize("written", ["text", "binary"])
async def test_each_library_reads_both_encodings_and_writes_its_own(
    redis: aioredis.Redis, written: MemberEncoding
) -> None:
    """Values written by one library are read by the other, which writes them again in its own
    encoding when it changes them, and leaves the others as they are."""
    other: MemberEncoding = "binary" if written == "text" else "text"
    await setup(redis, written)
    await grant_more(redis, written)
    await run(redis, "put_member", "bob", "1", "", "", encoding=written)
    await run(redis, "apply_grant", "bob", "b-seat", "s", ANCHOR, MARCH_END, ANCHOR, 10,
              encoding=written)  # fmt: skip
    before = decode_owner(await member_value(redis, "ann"))
    bob = await member_value(redis, "bob")
    balances = await run(redis, "balances", encoding=other)
    assert dict(zip(balances[::2], balances[1::2], strict=True)) == {
        b"early": b"1", b"older": b"3", b"seas": b"4", b"seat": b"100", b"addon": b"2",
        b"pool": b"1000", b"b-seat": b"10",
    }  # fmt: skip
    # 8 credits: the 1 of "early", 3 of "older", 4 of "seas"; then 200: the seat's 100, the
    # add-on's 2 and 98 of the pool.
    reply = await run(redis, "settle_batch", NOW, packed(("e1", "ann", 8, NOW, ""),
                      ("e2", "ann", 200, NOW, "")), encoding=other)  # fmt: skip
    assert reply[0] == b"nn"
    ann = await member_value(redis, "ann")
    assert (ann[:1] == b"\x02") == (other == "binary")
    config, buckets = decode_owner(ann)
    assert config == before[0]
    assert [(b[4], b[5]) for b in buckets] == [
        ("early", 0), ("older", 0), ("seas", 0), ("seat", 0), ("addon", 0),
    ]  # fmt: skip
    assert [b[:5] for b in buckets] == [b[:5] for b in before[1]]
    pool = await redis.get(P + "sh")
    assert (pool[:1] == b"\x02") == (other == "binary")
    assert decode_owner(pool)[1][0][5] == 902
    assert await member_value(redis, "bob") == bob  # not drawn from: not written
    assert (await run(redis, "void", NOW, "e2", "", encoding=written))[0] == b"new"
    assert decode_owner(await member_value(redis, "ann"))[1][3][5] == 100
    assert decode_owner(await redis.get(P + "sh"))[1][0][5] == 1000


async def test_settle_confirm_void(redis: aioredis.Redis) -> None:
    await setup(redis)
    reply = await run(redis, "settle_batch", NOW, packed(("e1", "ann", 150, NOW, ""),
                      ("e2", "bob", 1, NOW, ""), ("e1", "ann", 150, NOW, "")))  # fmt: skip
    assert reply[0] == b"nxd"
    assert reply[1] == reply[3] and reply[2] == b"unknown_member"
    result = SEP.join(["ann", "150", str(NOW), str(ANCHOR), str(MARCH_END), "team", "0", "0", "",
                       "seat", "s", "100", "pool", "h", "50"])  # fmt: skip
    assert reply[1].decode() == result
    assert await hash_of(redis, P + "r") == {"e1": result}
    counters = P + f"c:{ANCHOR}"
    assert await hash_of(redis, counters) == {
        "aann": "150", "sann": "50", "gteam": "150", "d": "150", "_": "_" * 72,
    }  # fmt: skip
    assert await redis.object("encoding", counters) == b"hashtable"
    ttl = await redis.pttl(counters)
    assert MARCH_END + 7 * 86_400_000 - NOW - 5000 < ttl <= MARCH_END + 7 * 86_400_000 - NOW
    assert decode_owner(await member_value(redis, "ann"))[1][0][5] == 0
    assert decode_owner(await redis.get(P + "sh"))[1][0][5] == 950

    assert await run(redis, "void", MARCH_END, "e1", "") == [
        b"new",
        b"pool",
        b"h",
        b"50",
    ]  # fmt: skip  (the seat bucket expired at MARCH_END)
    assert await hash_of(redis, P + "v") == {"e1": SEP.join(["new", "pool", "h", "50"])}
    assert await hash_of(redis, counters) == {
        "aann": "0", "sann": "0", "gteam": "0", "d": "0", "_": "_" * 72,
    }  # fmt: skip
    assert decode_owner(await redis.get(P + "sh"))[1][0][5] == 1000
    assert (await run(redis, "void", MARCH_END, "e1", ""))[0] == b"dup"

    assert await run(redis, "confirm", "e1\x1enope\x1e") == 1
    assert await redis.exists(P + "r") == 0


async def test_counters_get_their_expiry_from_whoever_pads_them(redis: aioredis.Redis) -> None:
    await setup(redis)
    counters = P + f"c:{ANCHOR}"
    keep = MARCH_END + 7 * 86_400_000
    # A void's HINCRBY on a counters hash that is gone leaves one without pad or expiry.
    await redis.hset(counters, "aann", "0")
    assert await redis.pttl(counters) == -1
    assert (await run(redis, "settle_batch", NOW, packed(("e1", "ann", 10, NOW, ""))))[0] == b"n"
    assert (await hash_of(redis, counters))["_"] == "_" * 72
    assert keep - NOW - 5000 < await redis.pttl(counters) <= keep - NOW
    # Padded, the hash keeps that expiry: the instant is the period's, whatever the call's now.
    later = NOW + 86_400_000
    reply = await run(redis, "settle_batch", later, packed(("e2", "ann", 10, later, "")))
    assert reply[0] == b"n"
    assert (await hash_of(redis, counters))["aann"] == "20"
    assert keep - NOW - 5000 < await redis.pttl(counters) <= keep - NOW


async def test_holds_reserve_release_expire(redis: aioredis.Redis) -> None:
    await setup(redis)
    reply = await run(redis, "reserve", NOW, "ann", 120, "r1", 1000)
    assert reply[0] == b"" and reply[-2:] == [b"r1", str(NOW + 1000).encode()]
    # Each hash of holds has a pad field that keeps it a hashtable, found without a scan.
    pad = "_" * 72
    assert await hash_of(redis, P + "h") == {
        "r1": SEP.join(["ann", str(NOW + 1000), "team", "120", "20", "seat", "100", "pool", "20"]),
        SEP: pad,
    }  # fmt: skip
    assert await redis.zrange(P + "hx", 0, -1, withscores=True) == [(b"r1", NOW + 1000)]
    assert await hash_of(redis, P + "ha") == {
        "aann": "120", "sann": "20", "gteam": "120", "bseat": "100", "bpool": "20", "_": pad,
    }  # fmt: skip
    for key in ("h", "ha"):
        assert await redis.object("encoding", P + key) == b"hashtable"
    assert await run(redis, "reserve", NOW, "ann", 1, "r1", 1000) == [
        b"held", str(NOW + 1000).encode(),
    ]  # fmt: skip
    await run(redis, "reserve", NOW, "ann", 10, "r2", 5000)
    # The org hash keeps a lower bound of the holds' expiries, so calls skip the cleaning before.
    assert await redis.hget(P + "o", "hm") == str(NOW + 1000).encode()
    assert await run(redis, "release", NOW, "r2") == 1
    assert await run(redis, "release", NOW, "r2") == 0
    # Any call at or after the expiry drops the hold and its sums.
    check = await run(redis, "check", NOW + 1000, "ann", 1)
    assert check[0] == b"" and check[1] == b"100"
    for key in ("h", "hx", "ha"):
        assert await redis.exists(P + key) == 0
    assert await redis.hget(P + "o", "hm") is None


async def test_balances_and_usage(redis: aioredis.Redis) -> None:
    await setup(redis)
    await run(redis, "settle_batch", NOW, packed(("e1", "ann", 30, NOW, "")))
    flat = await run(redis, "balances")
    assert dict(zip(flat[::2], flat[1::2], strict=True)) == {b"seat": b"70", b"pool": b"1000"}
    flat = await run(redis, "usage", NOW)
    assert dict(zip(flat[::2], flat[1::2], strict=True)) == {
        b"aann": b"30", b"gteam": b"30", b"d": b"30",
    }  # fmt: skip
    assert await run(redis, "usage", MARCH_END) == []
    # A check remembers the current period in the org hash; put_org forgets it.
    await run(redis, "check", NOW, "ann", 1)
    assert (await redis.hmget(P + "o", "ps", "pe")) == [str(ANCHOR).encode(), b"%d" % MARCH_END]
    await run(redis, "put_org", "active", "rolling", ANCHOR, 30, "all", "", 0)
    assert (await redis.hmget(P + "o", "ps", "pe")) == [None, None]
