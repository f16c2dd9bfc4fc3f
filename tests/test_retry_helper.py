"""The one retry helper every retry loop of the engine uses (pure logic, injected sleep)."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from kafkaconsole.config.models import RetryPolicy
from kafkaconsole.engine.retry import retry_call

POLICY = RetryPolicy(max_attempts=4, initial_backoff=0.5, max_backoff=3.0, jitter=False)


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns ``"ok"``."""

    def __init__(self, failures: int, exc: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.exc(f"failure {self.calls}")
        return "ok"


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_retries_with_capped_backoff_until_it_succeeds() -> None:
    fn, sleep = Flaky(3), Sleeps()
    seen: list[int] = []
    got = await retry_call(
        fn,
        POLICY,
        retry_on=(ConnectionError,),
        what="x",
        sleep=sleep,
        on_error=lambda n, e: seen.append(n),
    )
    assert got == "ok" and fn.calls == 4
    assert sleep.delays == [0.5, 1.0, 2.0]
    assert seen == [1, 2, 3]


async def test_gives_up_after_the_policy_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    fn, sleep = Flaky(10), Sleeps()
    log = logging.getLogger("kafkaconsole.test-retry")
    caplog.set_level(logging.WARNING, logger=log.name)
    with pytest.raises(ConnectionError, match="failure 4"):
        await retry_call(
            fn, POLICY, retry_on=(ConnectionError,), what="reading x", sleep=sleep, logger=log
        )
    assert fn.calls == 4 and sleep.delays == [0.5, 1.0, 2.0]
    [line] = [r.getMessage() for r in caplog.records]
    assert line == "reading x: giving up (after 4 attempt(s)): ConnectionError: failure 4"


async def test_other_errors_are_not_retried() -> None:
    fn, sleep = Flaky(1, ValueError), Sleeps()
    with pytest.raises(ValueError):
        await retry_call(fn, POLICY, retry_on=(ConnectionError,), what="x", sleep=sleep)
    assert fn.calls == 1 and sleep.delays == []


async def test_zero_attempts_retries_until_stop(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    calls = 0

    async def fn() -> None:
        nonlocal calls
        calls += 1
        if calls == 20:
            stop.set()
        raise ConnectionError("down")

    caplog.set_level(logging.WARNING, logger="kafkaconsole")
    with pytest.raises(ConnectionError):
        await retry_call(
            fn,
            POLICY,
            retry_on=(ConnectionError,),
            what="waiting",
            attempts=0,
            stop=stop,
            sleep=Sleeps(),
        )
    assert calls == 20
    assert any("waiting: giving up (stopping)" in r.getMessage() for r in caplog.records)


async def test_a_set_stop_cuts_the_backoff_short() -> None:
    stop = asyncio.Event()
    slow = RetryPolicy(max_attempts=1, initial_backoff=60.0, max_backoff=60.0, jitter=False)
    fn = Flaky(5)
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, stop.set)
    t0 = loop.time()
    with pytest.raises(ConnectionError):
        await retry_call(fn, slow, retry_on=(ConnectionError,), what="x", attempts=0, stop=stop)
    assert loop.time() - t0 < 5 and fn.calls == 2


async def test_give_up_after_bounds_the_time() -> None:
    fn, sleep = Flaky(1000), Sleeps()
    with pytest.raises(ConnectionError):
        await retry_call(
            fn,
            POLICY,
            retry_on=(ConnectionError,),
            what="x",
            attempts=0,
            give_up_after=0,
            sleep=sleep,
        )
    assert fn.calls == 1 and sleep.delays == []


async def test_jitter_stays_under_the_cap() -> None:
    jittered = RetryPolicy(max_attempts=6, initial_backoff=1.0, max_backoff=4.0, jitter=True)
    sleep = Sleeps()
    with pytest.raises(ConnectionError):
        await retry_call(
            Flaky(10),
            jittered,
            retry_on=(ConnectionError,),
            what="x",
            sleep=sleep,
            rng=random.Random(7),
        )
    caps = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(sleep.delays) == 5
    assert all(0 <= d <= cap for d, cap in zip(sleep.delays, caps, strict=True))
