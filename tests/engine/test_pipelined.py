"""Several organizations settled in one pipeline answer what each settled alone answers, and an
organization the pipeline could not settle says why without holding back the others. Confirming
several organizations in one pipeline drops the stored results named, and only those."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator

import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from meter.engine.redis import (
    MAX_BATCH,
    EncodedResults,
    RedisEngine,
    confirm_pipelined,
    org_key,
    settle_encoded,
    settle_pipelined,
)
from meter.engine.types import (
    MICRO,
    BillingGroupConfig,
    EngineInputError,
    Grant,
    Kind,
    MemberConfig,
    OrgConfig,
    OrgStatus,
    PeriodKind,
    UsageEvent,
)

NOW = 1_710_000_000_000


@pytest_asyncio.fixture(loop_scope="session")
async def engine(redis_url: str) -> AsyncIterator[RedisEngine]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield RedisEngine(client)
    finally:
        await client.aclose()


async def _org(engine: RedisEngine, org_id: str) -> None:
    """An organization whose members run out: seats, a personal add-on, a small shared pool,
    one billing group with a limit."""
    await engine.put_org(OrgConfig(org_id, OrgStatus.ACTIVE, PeriodKind.MONTHLY, NOW - 10**9))
    await engine.put_billing_group(BillingGroupConfig(org_id, "team", 30 * MICRO))
    for m in range(6):
        group = "team" if m < 3 else ""
        await engine.put_member(MemberConfig(org_id, f"m{m}", billing_group=group))
        await engine.apply_grant(
            Grant(
                org_id, f"seat-{m}", Kind.SEAT, 5 * MICRO, NOW - 10, NOW + 10**9, NOW - 10, f"m{m}"
            )
        )
    await engine.apply_grant(
        Grant(org_id, "addon", Kind.PERSONAL, 7 * MICRO, NOW - 10, NOW + 10**8, NOW - 10, "m1")
    )
    await engine.apply_grant(
        Grant(org_id, "pool", Kind.SHARED, 40 * MICRO, NOW - 10, NOW + 10**9, NOW - 10)
    )


def _events(org_id: str, n: int, seed: int) -> list[UsageEvent]:
    """`n` events with some keys sent twice (a producer's retry), and one of a stranger."""
    rng = random.Random(seed)
    events = [
        UsageEvent(
            f"src e{i}", org_id, f"m{rng.randrange(6)}", rng.randrange(1, 3 * MICRO), NOW + i
        )
        for i in range(n)
    ]
    stranger = UsageEvent(f"src s{seed}", org_id, "not-a-member", MICRO, NOW + n)
    return events + [events[i] for i in rng.sample(range(n), n // 10)] + [stranger]


async def _twins(engine: RedisEngine, sizes: list[int]) -> tuple[list[str], list[str]]:
    tag = uuid.uuid4().hex[:8]
    alone = [f"alone-{tag}-{i}" for i in range(len(sizes))]
    piped = [f"piped-{tag}-{i}" for i in range(len(sizes))]
    for org_id in alone + piped:
        await _org(engine, org_id)
    return alone, piped


def _same_org(results: EncodedResults, org_id: str, twin: str) -> EncodedResults:
    status, bodies = results
    return status, [body.replace(org_id, twin) for body in bodies]


async def test_a_pipeline_settles_as_each_organization_alone(engine: RedisEngine) -> None:
    sizes = [1, 40, 400, MAX_BATCH + 300]  # the last takes two calls
    alone, piped = await _twins(engine, sizes)
    expected: list[EncodedResults] = []
    for i, org_id in enumerate(alone):
        events = _events(org_id, sizes[i], seed=i)
        expected.append(await settle_encoded(engine, org_id, events, NOW + 10**6, trusted=True))
    calls = [(org_id, _events(org_id, sizes[i], seed=i)) for i, org_id in enumerate(piped)]
    answers = await settle_pipelined(engine, calls, NOW + 10**6, trusted=True)
    assert len(answers) == len(sizes)
    for i, answer in enumerate(answers):
        assert not isinstance(answer, Exception)
        assert _same_org(answer, piped[i], alone[i]) == expected[i]
    statuses = "".join(answer[0] for answer in answers if not isinstance(answer, Exception))
    assert set(statuses) == {"n", "d", "x"}  # settled, replayed and refused all occurred
    # Settled again, each organization answers its stored results.
    again = await settle_pipelined(engine, calls, NOW + 10**6, trusted=True)
    for before, after in zip(answers, again, strict=True):
        assert not isinstance(before, Exception) and not isinstance(after, Exception)
        assert "n" not in after[0]
        for was, body, now, stored in zip(*before, *after, strict=True):
            if was != "x":
                assert (now, stored) == ("d", body)
    assert await engine.balances(piped[0], NOW + 10**6) == await engine.balances(
        alone[0], NOW + 10**6
    )


async def test_an_organization_that_fails_does_not_hold_back_the_others(
    engine: RedisEngine,
) -> None:
    _, piped = await _twins(engine, [1, 1])
    good, other = piped
    unknown = f"nobody-{uuid.uuid4().hex[:8]}"
    negative = UsageEvent("src bad", other, "m0", -1, NOW)
    calls = [
        (good, [UsageEvent("src a", good, "m0", MICRO, NOW)]),
        (other, [UsageEvent("src ok", other, "m0", MICRO, NOW), negative]),
        (unknown, [UsageEvent("src b", unknown, "m0", MICRO, NOW)]),
    ]
    answers = await settle_pipelined(engine, calls, NOW + 1000, trusted=False)
    assert answers[0] == ("n", [answers[0][1][0]])  # type: ignore[index]
    assert isinstance(answers[1], EngineInputError)
    assert answers[2] == ("x", ["unknown_org"])


async def test_a_server_that_forgot_the_functions_is_given_them_again(
    engine: RedisEngine, redis_url: str
) -> None:
    _, piped = await _twins(engine, [1, 1])
    calls = [(org_id, [UsageEvent("src a", org_id, "m0", MICRO, NOW)]) for org_id in piped]
    direct = aioredis.Redis.from_url(redis_url)
    try:
        await direct.function_flush()
    finally:
        await direct.aclose()
    answers = await settle_pipelined(engine, calls, NOW + 1000, trusted=True)
    assert all(isinstance(a, ResponseError) for a in answers)
    # The library is loaded again: settling each organization now works.
    answers = await settle_pipelined(engine, calls, NOW + 1000, trusted=True)
    assert [a[0] for a in answers if not isinstance(a, Exception)] == ["n", "n"]


async def test_on_a_cluster_each_organization_goes_to_its_primary(
    cluster_engine: RedisEngine,
) -> None:
    engine = cluster_engine
    assert engine.is_cluster
    alone, piped = await _twins(engine, [30, 30, 30])
    expected = [
        await settle_encoded(engine, org_id, _events(org_id, 30, seed=i), NOW + 10**6)
        for i, org_id in enumerate(alone)
    ]
    calls = [(org_id, _events(org_id, 30, seed=i)) for i, org_id in enumerate(piped)]
    answers = await settle_pipelined(engine, calls, NOW + 10**6)
    for i, answer in enumerate(answers):
        assert not isinstance(answer, Exception)
        assert _same_org(answer, piped[i], alone[i]) == expected[i]


async def _stored(engine: RedisEngine, org_id: str) -> set[str]:
    """The settlement keys whose results the organization's engine keeps (until confirmed)."""
    return {k.decode() for k in await engine.client.hkeys(org_key(org_id)[:-1] + "r")}


async def _settled(engine: RedisEngine, n_orgs: int) -> dict[str, list[str]]:
    """`n_orgs` organizations with three results stored each: their keys by organization."""
    _, orgs = await _twins(engine, [3] * n_orgs)
    keys = {org_id: [f"src k{i}" for i in range(3)] for org_id in orgs}
    calls = [
        (org_id, [UsageEvent(k, org_id, "m0", MICRO, NOW) for k in ks])
        for org_id, ks in keys.items()
    ]
    await settle_pipelined(engine, calls, NOW + 1000, trusted=True)
    for org_id, ks in keys.items():
        assert await _stored(engine, org_id) == set(ks)
    return keys


async def test_a_pipeline_confirms_the_keys_named_of_each_organization(
    engine: RedisEngine,
) -> None:
    a, b, c = await _settled(engine, 3)
    keys = {a: ["src k0", "src k2"], b: ["src k1"], c: []}
    await confirm_pipelined(engine, keys)
    assert await _stored(engine, a) == {"src k1"}
    assert await _stored(engine, b) == {"src k0", "src k2"}
    assert await _stored(engine, c) == {"src k0", "src k1", "src k2"}
    await confirm_pipelined(engine, keys)  # again: nothing more goes
    assert await _stored(engine, b) == {"src k0", "src k2"}


async def test_a_key_that_cannot_be_sent_confirms_nothing(engine: RedisEngine) -> None:
    a, b = await _settled(engine, 2)
    try:
        await confirm_pipelined(engine, {a: ["src k0"], b: ["src \x1ek1"]})
    except EngineInputError:
        pass
    else:
        raise AssertionError("a key with a control character was sent")
    assert await _stored(engine, a) == {"src k0", "src k1", "src k2"}


async def test_confirming_reloads_functions_the_server_forgot(
    engine: RedisEngine, redis_url: str
) -> None:
    a, b = await _settled(engine, 2)
    direct = aioredis.Redis.from_url(redis_url)
    try:
        await direct.function_flush()
    finally:
        await direct.aclose()
    await confirm_pipelined(engine, {a: ["src k0"], b: ["src k0", "src k1"]})
    assert await _stored(engine, a) == {"src k1", "src k2"}
    assert await _stored(engine, b) == {"src k2"}


async def test_on_a_cluster_each_organization_is_confirmed_on_its_primary(
    cluster_engine: RedisEngine,
) -> None:
    assert cluster_engine.is_cluster
    orgs = await _settled(cluster_engine, 3)
    await confirm_pipelined(cluster_engine, {org_id: ["src k1"] for org_id in orgs})
    for org_id in orgs:
        assert await _stored(cluster_engine, org_id) == {"src k0", "src k2"}


async def _one_fails_the_others_are_confirmed(engine: RedisEngine) -> None:
    """An organization whose results hash is no hash fails its confirm; the others still go."""
    a, b, c = await _settled(engine, 3)
    await engine.client.delete(org_key(b)[:-1] + "r")
    await engine.client.set(org_key(b)[:-1] + "r", "not a hash")
    try:
        await confirm_pipelined(engine, {a: ["src k0"], b: ["src k0"], c: ["src k1"]})
    except ResponseError as exc:
        assert "WRONGTYPE" in str(exc)
    else:
        raise AssertionError("the failed confirm was not reported")
    assert await _stored(engine, a) == {"src k1", "src k2"}
    assert await _stored(engine, c) == {"src k0", "src k2"}


async def test_an_organization_that_fails_to_confirm_does_not_hold_back_the_others(
    engine: RedisEngine,
) -> None:
    await _one_fails_the_others_are_confirmed(engine)


async def test_on_a_cluster_a_failed_confirm_does_not_hold_back_the_others(
    cluster_engine: RedisEngine,
) -> None:
    await _one_fails_the_others_are_confirmed(cluster_engine)
