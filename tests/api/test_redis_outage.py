"""Redis going away mid-run and coming back, on a real redis-server of the test's own
(tests/redis_server.py) shared by two apps (two web processes) on one database.

What the README promises (HEALTHHUB_REDIS_URL; docs/operations.md "Rate limits"): when Redis
cannot be reached, requests are let through by the limiter and revocations are checked against
the database's list — which each process re-reads every REFRESH_EVERY seconds (shortened to 1 s
here), so another process refuses a token revoked just before or during the outage within that
delay, the process that revoked it at once. No 500, and no request waits longer than the Redis
clients' socket timeouts (revocation check 0.5 s, counter 1 s), even when Redis hangs (SIGSTOP)
rather than refuses connections (SIGKILL). Redis back on the same port: counting resumes, from
zero (the restarted server kept nothing: no persistence), and every revocation still holds.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from healthhub import redis_guard
from healthhub.auth import revocation
from tests.api.test_rate_limit import wait_for_a_fresh_window
from tests.auth.test_revocation_shared import backend_client, revoke_through, token_from
from tests.redis_server import RedisServer, running_server

LIMIT = 10
#: The longest a request may take while Redis is away: its two Redis calls' socket timeouts
#: (0.5 s + 1 s) and the request itself, with room for a busy machine. Longer is a hang.
BOUND = 5.0
REFRESH = 1.0  # REFRESH_EVERY in this test
COOLDOWN = 2.0  # redis_guard.COOLDOWN in this test: longer than the frozen phase's fast requests

_addresses = (f"198.51.100.{i % 250 + 1}" for i in itertools.count())


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone: it is frozen, stopped and started again."""
    with running_server() as server:
        yield server


@pytest.fixture
def spy(own_redis: RedisServer) -> Iterator[Any]:
    """A client of our own to look into that server (it reconnects after a restart)."""
    import redis

    client = redis.Redis.from_url(own_redis.url, socket_timeout=5)
    yield client
    client.close()


def ask(web: Any, bearer: dict[str, str]) -> tuple[int, float]:
    """GET /fhir/Patient with ``bearer``: the status and how long it took — failing, instead of
    hanging the suite, past BOUND. Each request comes from a new address (a refused token is
    charged to its address: the test's own checks must not use up an address's budget)."""
    outcome: list[Any] = []
    address = next(_addresses)

    def run() -> None:
        try:
            outcome.append(web.get("/fhir/Patient", headers=bearer, environ_base={"REMOTE_ADDR": address}))
        except BaseException as exc:  # re-raised in the test's thread
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(BOUND)
    took = time.monotonic() - started
    assert outcome, f"no answer within {BOUND} s: a request hangs on Redis"
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    answer = outcome[0]
    assert answer.status_code in (200, 401, 429), answer.get_data(as_text=True)[:300]  # never a 500
    return int(answer.status_code), took


def status(web: Any, bearer: dict[str, str]) -> int:
    return ask(web, bearer)[0]


def eventually_refused(webs: list[Any], bearer: dict[str, str], within: float) -> None:
    deadline = time.monotonic() + within
    for web in webs:
        while (code := status(web, bearer)) != 401:
            assert code == 200 and time.monotonic() < deadline, f"token not refused within {within} s"
            time.sleep(0.1)


def test_redis_away_and_back(make_app: Any, own_redis: RedisServer, spy: Any, monkeypatch: pytest.MonkeyPatch,
                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(revocation, "REFRESH_EVERY", REFRESH)
    monkeypatch.setattr(redis_guard, "COOLDOWN", COOLDOWN)
    first = make_app(rate_limit=LIMIT, redis_url=own_redis.url)
    second = make_app(rate_limit=LIMIT, redis_url=own_redis.url)
    one, two = first.test_client(), second.test_client()
    webs = [one, two]
    admin = first.test_client()  # the token and revocation endpoints, from an address of their own
    admin.environ_base["REMOTE_ADDR"] = "192.0.2.200"  # 5 requests in all: never near the limit
    creds = backend_client(first)
    alive, revoked_before, revoked_during = (token_from(admin, creds) for _ in range(3))
    assert one.get("/fhir/Patient", headers=alive).status_code == 200  # the first search loads the registry (s)
    spy.flushall()  # …and that request is not counted below
    caplog.set_level(logging.WARNING)

    # Redis up: the two apps share one exact counter, and a revocation counts everywhere at once.
    wait_for_a_fresh_window(3)
    assert [status(webs[i % 2], alive) for i in range(3)] == [200] * 3
    [key] = spy.keys("healthhub:rl:client:*")
    assert int(spy.get(key)) == 3
    assert status(two, revoked_before) == 200
    revoke_through(admin, creds, revoked_before)
    assert status(two, revoked_before) == 401

    # Redis hangs (SIGSTOP): a request waits for the socket timeouts, no longer, and goes through;
    # the other app's database list (last read over REFRESH ago) refuses the revoked token.
    own_redis.freeze()
    for web in webs:
        code, took = ask(web, alive)
        assert code == 200 and took < BOUND
        # …and in the cool-down after that failure Redis is not asked: no request waits for it.
        code, took = ask(web, alive)
        assert code == 200 and took < 0.5, f"{took:.2f} s: Redis asked again during the cool-down"
    assert status(two, revoked_before) == 401

    # Redis gone (SIGKILL: connections refused): let through past the limit, at once; revocations
    # from the database's lists — a new one too.
    own_redis.stop()
    timings = [ask(webs[i % 2], alive) for i in range(LIMIT + 5)]
    assert [code for code, _ in timings] == [200] * (LIMIT + 5)  # more than LIMIT in any window: none refused
    assert max(took for _, took in timings) < 1.0  # refused connections fail fast
    eventually_refused(webs, revoked_before, within=REFRESH + 2)
    revoke_through(admin, creds, revoked_during)  # into the database only (Redis: a warning)
    assert status(one, revoked_during) == 401  # the app that revoked it: at once
    eventually_refused([two], revoked_during, within=REFRESH + 2)  # the other: at its next read of the list
    messages = {r.getMessage() for r in caplog.records}
    assert "rate limit: counter store unavailable; request let through" in messages
    assert "revocation check: Redis unavailable; using the database's list" in messages
    assert any(m.startswith("revocation: Redis unavailable") for m in messages)

    # Redis back on the same port, empty: counting resumes (exact and shared again).
    own_redis.start()
    time.sleep(COOLDOWN)  # the apps ask Redis again once their cool-down is over
    wait_for_a_fresh_window(3)
    codes = [status(webs[i % 2], alive) for i in range(LIMIT + 2)]
    assert codes == [200] * LIMIT + [429] * 2
    [key] = spy.keys("healthhub:rl:client:*")
    assert int(spy.get(key)) == LIMIT + 2
    assert not spy.keys("healthhub:revoked:*")  # the restarted Redis kept nothing; the database did:
    for bearer in (revoked_before, revoked_during):
        assert status(one, bearer) == status(two, bearer) == 401
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
