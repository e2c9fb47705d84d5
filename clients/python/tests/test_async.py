"""AsyncClient: the same calls on asyncio (no plugin: each test runs its own loop)."""

from __future__ import annotations

import asyncio
import time

import pytest

import wasq
from conftest import free_port, unique


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_async_submit_call_and_results(deployment, module: str) -> None:
    async def main() -> None:
        async with wasq.AsyncClient(deployment.redis.url, deployment.prefix) as c:
            handle = await c.submit(module, "add", 4, 5)
            assert isinstance(handle, wasq.AsyncHandle)
            assert await handle.get(timeout=30) == 9
            assert await c.call(module, "hello", wait=30) == "hello from wasq"
            handles = await c.submit_many(module, "add", [[i, 1] for i in range(200)])
            assert await c.results(handles, timeout=60) == [i + 1 for i in range(200)]
            # Many waits at once on one loop.
            got = await asyncio.gather(*(c.call(module, "add", i, i, wait=30) for i in range(50)))
            assert got == [2 * i for i in range(50)]

    run(main())


def test_async_failures_and_timeouts(deployment, module: str) -> None:
    async def main() -> None:
        async with wasq.AsyncClient(deployment.redis.url, deployment.prefix) as c:
            with pytest.raises(wasq.FuelExhausted) as raised:
                await c.call(module, "fib", 30, fuel=100_000, wait=30)
            assert raised.value.envelope.error["kind"] == "fuel_exhausted"
            with pytest.raises(wasq.TaskError):
                await c.call(module, "fib", 100, wait=30)
            with pytest.raises(wasq.TaskNotFound):
                await c.call(module, "nope", wait=30)
            slow = await c.submit(module, "long_processing", "a", 1.0)
            started = time.monotonic()
            with pytest.raises(wasq.ResultTimeout):
                await slow.get(timeout=0.2)
            assert time.monotonic() - started < 2
            assert await slow.get(timeout=30) == "processed a"
            with pytest.raises(wasq.InvalidCall):
                await c.submit(module, "add", {1, 2})

    run(main())


def test_async_names(deployment, examples) -> None:
    async def main() -> None:
        async with wasq.AsyncClient(deployment.redis.url, deployment.prefix) as c:
            name = unique("aexamples")
            ref = await c.tag(name, examples, version="2")
            assert await c.resolve(f"{name}@2") == ref
            assert await c.call(f"{name}@2", "add", 2, 2, wait=30) == 4

    run(main())


def test_async_redis_unreachable(module: str) -> None:
    async def main() -> None:
        url = f"redis://127.0.0.1:{free_port()}"
        async with wasq.AsyncClient(url, "nobody", connect_timeout=1) as c:
            with pytest.raises(wasq.BrokerUnavailable):
                await c.submit(module, "add", 1, 2)
            with pytest.raises(wasq.BrokerUnavailable):
                await c.call(module, "add", 1, 2, wait=1)

    run(main())
