"""pipelines.serve.generator: how the generator replica forms its batches (the replica's class in this process, a
real tiny model, real asyncio; the HTTP path is tests/test_serve.py)."""

import asyncio
import threading

import pytest
from conftest_data import make_tiny_serving_model, random_features

from pipelines.serve.config import Scaling, ServeConfig
from pipelines.serve.generator import GeneratorServer


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    model = make_tiny_serving_model(tmp_path_factory.mktemp("serve-gen") / "model")
    config = ServeConfig(model=str(model), max_batch_size=8, batch_wait_timeout_s=0.01,
                         generator=Scaling(num_cpus=1))  # fmt: skip
    return GeneratorServer.func_or_class(str(model), config)  # the deployment's class, as its replica builds it


def _request(i: int) -> dict:
    return {"features": random_features(32, 2.0, "v2s", seed=i), "steps": 4, "cfg": None, "seed": i}


def _hold_compute_thread(replica) -> threading.Event:
    """Keep the replica's compute thread busy until the returned event is set (a generation that lasts as long
    as the test needs, whatever the machine's speed)."""
    gate = threading.Event()
    replica.pool.submit(gate.wait, 60)
    return gate


def test_requests_arriving_during_a_generation_all_join_the_next_batch(replica):
    """Six requests arriving one by one while a batch generates are generated together next: the batch is formed
    when the compute thread is free. (Ray Serve's @serve.batch formed a batch of each, since each came more than
    batch_wait_timeout_s after the one before, and a formed batch waited, unchanged, for the one running.)"""

    async def scenario():
        gate = _hold_compute_thread(replica)
        first = asyncio.create_task(replica.generate(_request(0)))
        await asyncio.sleep(0.05)
        later = []
        for i in range(1, 7):
            later.append(asyncio.create_task(replica.generate(_request(i))))
            await asyncio.sleep(0.03)
        gate.set()
        return await first, await asyncio.gather(*later)

    first, later = asyncio.run(scenario())
    assert first["ok"] and first["batch_size"] == 1  # alone in an idle replica: it started at once
    assert [r["batch_size"] for r in later] == [6] * 6 and all(r["ok"] for r in later)
    assert all(r["group_size"] == 6 for r in later)  # one shape: one tensor batch
    assert replica.stats()["recent_batch_sizes"][-2:] == [1, 6]


def test_a_caller_that_gives_up_while_waiting_is_dropped_and_a_lone_request_starts_at_once(replica):
    async def scenario():
        gate = _hold_compute_thread(replica)
        busy = asyncio.create_task(replica.generate(_request(0)))
        await asyncio.sleep(0.05)
        gone = asyncio.create_task(replica.generate(_request(1)))
        stays = asyncio.create_task(replica.generate(_request(2)))
        await asyncio.sleep(0.05)
        gone.cancel()  # its caller left while it waited for the compute thread
        gate.set()
        await busy
        alone = await stays
        again = await replica.generate(_request(3))  # the replica is idle: it needs no company
        return alone, again

    alone, again = asyncio.run(scenario())
    assert alone["ok"] and alone["batch_size"] == 1  # the cancelled request was not generated with it
    assert again["ok"] and again["batch_size"] == 1
    assert replica.stats()["waiting"] == 0
