"""Rate limits: per client once authenticated, per address before; 429 + Retry-After +
OperationOutcome past the limit; counters shared by every process (the database, or Redis);
operator endpoints never limited; a counter store that fails lets requests through. The Redis
counters run on fakeredis and on a real redis-server (``redis_store``, tests/conftest.py); Redis
going away and coming back: test_redis_outage.py."""
from __future__ import annotations

import time
from typing import Any

import pytest

from healthhub.ratelimit.counters import WINDOW, DatabaseCounter, Limiter, RedisCounter
from tests.conftest import RedisStore, issue_token


def bearer(app: Any, client_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(app, 'system/*.rs', client_id=client_id)}"}


def test_a_client_past_its_limit_gets_429_and_others_do_not(make_app: Any) -> None:
    app = make_app(rate_limit=20)  # batch of 1: every hit is written (limit // 20)
    web = app.test_client()
    busy, quiet = bearer(app, "busy-system"), bearer(app, "quiet-system")
    codes = [web.get("/fhir/Patient", headers=busy).status_code for _ in range(25)]
    assert codes[:20] == [200] * 20 and set(codes[20:]) == {429}
    refused = web.get("/fhir/Patient", headers=busy)
    assert refused.get_json()["issue"][0]["code"] == "throttled"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert web.get("/fhir/Patient", headers=quiet).status_code == 200
    for path in ("/healthz", "/readyz"):
        assert all(web.get(path).status_code == 200 for _ in range(25))  # operator endpoints: no limit


def test_requests_without_a_token_are_limited_by_address(make_app: Any) -> None:
    app = make_app(rate_limit=20)
    web = app.test_client()
    codes = [web.get("/fhir/metadata", environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code for _ in range(22)]
    assert codes.count(200) == 20 and codes[-1] == 429
    assert web.get("/fhir/metadata", environ_base={"REMOTE_ADDR": "203.0.113.10"}).status_code == 200


def test_two_processes_share_the_database_counters(make_app: Any) -> None:
    """Two apps on one database stand for two gunicorn workers: the limit is for them together."""
    first, second = make_app(rate_limit=20), make_app(rate_limit=20)  # batch of 1: exact
    headers = bearer(first, "shared-system")
    codes = []
    for i in range(24):
        codes.append((first if i % 2 else second).test_client().get("/fhir/Patient", headers=headers).status_code)
    assert codes.count(200) == 20 and codes.count(429) == 4


def test_the_database_counter_batches_its_writes_but_keeps_the_total(make_app: Any) -> None:
    app = make_app()
    db = app.extensions["healthhub.db"]
    one, two = DatabaseCounter(db, batch=10), DatabaseCounter(db, batch=10)
    window = 1_800_000_000
    for _ in range(25):
        one.hit("client:a", window)
    for _ in range(10):
        two.hit("client:a", window)
    # `two` wrote its 10 with one's 20 already written: it sees 30; one's 5 are still local.
    assert two.hit("client:a", window) == 31
    assert one.hit("client:a", window) >= 26


def test_redis_counters(redis_store: RedisStore) -> None:
    first, second = Limiter(RedisCounter(redis_store.url), 3), Limiter(RedisCounter(redis_store.url), 3)
    verdicts = [(first if i % 2 else second).check("client:r", now=1_800_000_010.0).allowed for i in range(5)]
    assert verdicts == [True, True, True, False, False]
    assert first.check("client:r", now=1_800_000_070.0).allowed  # the next minute
    assert 0 < redis_store.client.ttl("healthhub:rl:client:r:1800000000") <= 2 * WINDOW  # old windows expire


def wait_for_a_fresh_window(seconds: float) -> None:
    """Sleep into the next one-minute window when fewer than ``seconds`` are left of this one:
    a burst of requests that must all count together stays in one window."""
    left = WINDOW - time.time() % WINDOW
    if left < seconds:
        time.sleep(left + 0.05)


def test_two_apps_share_the_redis_counters(make_app: Any, real_redis: RedisStore) -> None:
    """Two apps (two web processes) on the same database and the same real redis-server: hits
    through one count against the limit in the other — for a client and for an address."""
    first, second = make_app(rate_limit=20, redis_url=real_redis.url), make_app(rate_limit=20, redis_url=real_redis.url)
    headers = bearer(first, "shared-system")
    webs = [first.test_client(), second.test_client()]
    wait_for_a_fresh_window(3)
    codes = [webs[i % 2].get("/fhir/Patient", headers=headers).status_code for i in range(24)]
    assert codes == [200] * 20 + [429] * 4
    # Every hit is in Redis (none held back in a process): the second alone is refused at once.
    assert webs[1].get("/fhir/Patient", headers=headers).status_code == 429
    assert [int(real_redis.client.get(k)) for k in real_redis.client.keys("healthhub:rl:client:shared-system:*")] \
        == [25]
    addr = {"REMOTE_ADDR": "203.0.113.77"}
    by_first = [webs[0].get("/fhir/metadata", environ_base=addr).status_code for _ in range(20)]
    assert by_first == [200] * 20 and webs[1].get("/fhir/metadata", environ_base=addr).status_code == 429


def test_a_failing_counter_store_lets_requests_through() -> None:
    class Broken:
        def hit(self, key: str, window: int) -> int:
            raise ConnectionError("redis is away")

    assert Limiter(Broken(), 1).check("client:x").allowed



def test_bad_tokens_and_basic_credentials_count_against_the_address(make_app: Any) -> None:
    app = make_app(rate_limit=20)
    web = app.test_client()
    addr = {"REMOTE_ADDR": "198.51.100.7"}
    forged = [web.get("/fhir/Patient", headers={"Authorization": "Bearer not-a-token"}, environ_base=addr).status_code
              for _ in range(12)]
    basic = [web.post("/auth/token", data={"grant_type": "client_credentials"}, environ_base=addr,
                      headers={"Authorization": "Basic Zm9vOmJhcg=="}).status_code for _ in range(10)]
    assert set(forged) == {401} and basic[:8] != [429] * 8 and basic[-1] == 429


def test_behind_a_trusted_proxy_the_forwarded_address_is_limited(make_app: Any) -> None:
    app = make_app(rate_limit=20, proxy_hops=1)
    web = app.test_client()
    lb = {"REMOTE_ADDR": "10.0.0.2"}  # every request arrives from the load balancer
    first = [web.get("/fhir/metadata", environ_base=lb, headers={"X-Forwarded-For": "203.0.113.1"}).status_code
             for _ in range(21)]
    other = web.get("/fhir/metadata", environ_base=lb, headers={"X-Forwarded-For": "203.0.113.2"})
    assert first[-1] == 429 and other.status_code == 200


def test_counting_never_waits_for_a_long_sqlite_write(make_app: Any) -> None:
    """SQLite: a long write (a CSV upload, a big Bundle) holds the write lock for seconds. Counting
    a request waits for it at most SQLITE_WAIT_MS, then lets the request through; the hit is
    written with the next batch."""
    import sqlite3
    import time

    from sqlalchemy.engine import make_url

    app = make_app()
    db = app.extensions["healthhub.db"]
    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's single writer only")
    limiter = Limiter(DatabaseCounter(db, batch=1), 100)
    window_now = 1_800_000_000.0
    assert limiter.check("client:w", now=window_now).remaining == 99
    writer = sqlite3.connect(make_url(db.engine.url).database, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process's long write transaction
    try:
        started = time.monotonic()
        assert limiter.check("client:w", now=window_now).allowed
        assert time.monotonic() - started < 10  # not the engine's 30 s wait
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert limiter.check("client:w", now=window_now).remaining == 97  # the held-back hit counted too


def test_a_bearer_header_on_an_endpoint_that_reads_none_counts_against_the_address(make_app: Any) -> None:
    app = make_app(rate_limit=20)
    web = app.test_client()
    junk = {"Authorization": "Bearer anything"}
    codes = [web.get(path, headers=junk, environ_base={"REMOTE_ADDR": "192.0.2.44"}).status_code
             for path in ["/fhir/metadata", "/.well-known/smart-configuration"] * 11]
    assert codes.count(429) == 2 and codes[:20].count(200) == 20
