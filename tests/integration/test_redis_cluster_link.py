"""The request path's link to a Redis Cluster (platform/redis_cluster.py) against a real cluster of
three primaries and three replicas: a batch over several primaries answers in order, calls in
flight follow a slot's migration (ASK, then MOVED), and a killed primary's slots are found again
on its promoted replica without a new link. Each test has a cluster of its own: they reshard and
kill nodes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import ResponseError

from payments.platform.redis_cluster import ClusterLink, command_slot
from payments.platform.redis_link import REDIS_ERRORS, Script
from tests.conftest import CLUSTERED
from tests.redis_cluster import LocalCluster, Node, running_cluster

TIMEOUT_S = 0.25
COUNT = Script("return redis.call('INCR', KEYS[1])")


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    if not CLUSTERED:
        pytest.skip("make test-cluster runs it")
    with running_cluster() as started:
        yield started


@pytest.fixture
async def link(cluster: LocalCluster) -> AsyncIterator[ClusterLink]:
    link = ClusterLink(cluster.url, TIMEOUT_S)
    yield link
    link.close()


def test_a_command_goes_by_its_key_and_a_script_by_its_first_key() -> None:
    assert command_slot(("GET", "payments:{u:7}:x")) == key_slot(b"u:7")
    assert command_slot(("EVALSHA", "sha", 2, "a:{u:7}:x", "a:{u:7}:y", "arg")) == key_slot(b"u:7")
    assert command_slot(("EVALSHA", "sha", 0)) is None
    assert command_slot(("PING",)) is None


async def test_a_batch_over_every_primary_answers_in_its_order(
    link: ClusterLink, cluster: LocalCluster
) -> None:
    keys = [f"payments:{{u:{i}}}:n" for i in range(60)]
    assert len({cluster.primary_for(key).port for key in keys}) == 3
    assert await link.execute(*[("SET", key, i) for i, key in enumerate(keys)]) == [b"OK"] * 60
    assert await link.execute(*[("GET", key) for key in keys]) == [
        str(i).encode() for i in range(60)
    ]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await link.execute(("GET", keys[0]), ("HGET", keys[1], "field"))


async def test_calls_in_flight_follow_a_slot_that_moves(
    link: ClusterLink, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two keys of one slot; the first migrates, then the second, then the slot: calls meanwhile
    get ASK for the first, MOVED after. Every INCR counts once."""
    first, second = "payments:{m}:first", "payments:{m}:second"
    redirects: list[str] = []
    followed = ClusterLink.redirected

    def recorded(self: ClusterLink, index: int, error: ResponseError, asking: Any) -> bool:
        redirects.append(str(error).split(" ")[0])
        return followed(self, index, error, asking)

    monkeypatch.setattr(ClusterLink, "redirected", recorded)
    source = cluster.primary_for(first)
    target = next(node for node in cluster.nodes[:3] if node is not source)
    counted = 0
    moving = True

    async def keep_counting() -> None:
        nonlocal counted
        while moving:
            for key in (first, second):
                assert await link.run_script(COUNT, [key], []) is not None
                counted += 1
            await asyncio.sleep(0.001)

    counter = asyncio.create_task(keep_counting())
    await asyncio.sleep(0.1)
    await asyncio.to_thread(migrate_slot, source, target, key_slot(b"m"), [first], [second])
    await asyncio.sleep(0.1)
    moving = False
    await counter
    assert {"ASK", "MOVED"} <= set(redirects)
    values = await link.execute(("GET", first), ("GET", second))
    assert sum(int(value) for value in values) == counted
    assert cluster.primary_for(first) is target
    assert link.node_of(("GET", first)) == ("127.0.0.1", target.port)


def migrate_slot(
    source: Node, target: Node, slot: int, first_keys: list[str], later_keys: list[str]
) -> None:
    """What `redis-cli --cluster reshard` does for one slot, with a pause between the keys."""
    source_client, target_client = source.client(), target.client()
    target_client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source.node_id)
    source_client.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target.node_id)
    for keys in (first_keys, later_keys):
        source_client.execute_command(
            "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
        )
        time.sleep(0.2)  # the calls in flight meet a slot half moved: ASK
    for client in (target_client, source_client):
        client.execute_command("CLUSTER SETSLOT", slot, "NODE", target.node_id)
    time.sleep(0.2)  # and then a slot moved: MOVED


async def test_a_killed_primary_is_replaced_without_a_new_link(
    link: ClusterLink, cluster: LocalCluster
) -> None:
    """Calls fail (the caller falls back) only until the replica takes over; a script is never
    sent twice, so the count is never above the successes (below: writes the dead primary
    acknowledged and never replicated)."""
    key = "payments:{u:1}:count"
    successes = failures = 0
    last_failure = started = time.monotonic()
    dead = cluster.primary_for(key)

    async def keep_counting(until: float) -> None:
        nonlocal successes, failures, last_failure
        while time.monotonic() < until:
            try:
                await link.run_script(COUNT, [key], [])
                successes += 1
            except REDIS_ERRORS:
                failures += 1
                last_failure = time.monotonic()
            await asyncio.sleep(0.002)

    counting = asyncio.create_task(keep_counting(time.monotonic() + 7))
    await asyncio.sleep(0.5)
    cluster.kill(dead)
    killed = time.monotonic()
    await counting
    assert failures > 0
    assert last_failure - killed < 5.0  # cluster-node-timeout 1 s, then the election
    assert started < killed
    [value] = await link.execute(("GET", key))
    assert successes - 20 <= int(value) <= successes  # replication is asynchronous
    assert link.node_of(("GET", key)) != ("127.0.0.1", dead.port)
