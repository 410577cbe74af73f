"""Request budgets (Flask-Limiter): 429 ``rate_limited`` with ``Retry-After`` in the error envelope, per client
address when keys are off, per API key when they are on; POSTs have a budget of their own; the counters are
shared through Redis by two app instances; the public endpoints are never counted."""
from __future__ import annotations

import socket
import time

import pytest

from tests.api_fixtures import *

GALLERIES = "/api/v1/galleries"


def _addr(ip: str) -> dict:
    return {"environ_base": {"REMOTE_ADDR": ip}}


def _assert_429(r, limit: str) -> int:
    """The envelope and the header of a refusal; returns its Retry-After."""
    assert r.status_code == 429, r.get_json()
    body = r.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == "rate_limited"
    assert limit in body["error"]["message"] and body["error"]["details"]["limit"] == limit
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 61 and body["error"]["details"]["retry_after_s"] == retry
    return retry


def test_per_address_budget_429_with_retry_after_and_exempt_endpoints(make_app):
    app = make_app(rate={"default": "5 per minute"})
    c = app.test_client()
    for _ in range(5):
        assert c.get(GALLERIES, **_addr("10.0.0.1")).status_code == 200
    _assert_429(c.get(GALLERIES, **_addr("10.0.0.1")), "5 per 1 minute")
    _assert_429(c.get("/api/v1/no-such-route", **_addr("10.0.0.1")), "5 per 1 minute")  # 404s count too
    assert c.get(GALLERIES, **_addr("10.0.0.2")).status_code == 200  # another address: its own budget
    for path in ("/health", "/ready", "/openapi.json", "/docs", "/docs/swagger"):  # never counted
        for _ in range(3):
            assert c.get(path, **_addr("10.0.0.1")).status_code in (200, 302), path
    assert c.options(GALLERIES, **_addr("10.0.0.1")).status_code != 429  # CORS preflights neither


def test_posts_have_a_budget_of_their_own(make_app):
    app = make_app(rate={"default": "100 per minute", "heavy": "2 per minute"})
    c = app.test_client()
    for i in range(2):
        assert c.post(GALLERIES, json={"name": f"g{i}"}).status_code == 201
    r = c.post(GALLERIES, json={"name": "g2"})
    _assert_429(r, "2 per 1 minute")
    assert "POST" in r.get_json()["error"]["message"]
    assert c.get(GALLERIES).status_code == 200  # reading goes on


def test_per_key_budgets_are_separate_and_bad_keys_count_against_the_address(make_app):
    app = make_app(api_keys=True, rate={"default": "4 per minute"})
    keys = app.extensions["facerec"].keys
    a, _ = keys.create(["*"])
    b, _ = keys.create(["*"])
    c = app.test_client()
    for _ in range(4):
        assert c.get(GALLERIES, headers={"X-API-Key": a}).status_code == 200
    r = c.get(GALLERIES, headers={"X-API-Key": a})
    _assert_429(r, "4 per 1 minute")
    assert "API key" in r.get_json()["error"]["message"]
    assert c.get(GALLERIES, headers={"X-API-Key": b}).status_code == 200  # same address, another key
    for _ in range(4):  # guessing keys costs the address's budget, not a key's
        assert c.get(GALLERIES, headers={"X-API-Key": "frk_000000000000_" + "x" * 43}).status_code == 401
    r = c.get(GALLERIES, headers={"X-API-Key": "frk_000000000000_" + "y" * 43})
    _assert_429(r, "4 per 1 minute")
    assert "client address" in r.get_json()["error"]["message"]
    assert c.get(GALLERIES, headers={"X-API-Key": b}).status_code == 200


def test_retry_after_is_enough(make_app):
    app = make_app(rate={"default": "2 per 2 second"})
    c = app.test_client()
    while (r := c.get(GALLERIES)).status_code == 200:
        pass
    retry = _assert_429(r, "2 per 2 second")
    time.sleep(retry)
    assert c.get(GALLERIES).status_code == 200


def test_off_means_no_budget_and_429_is_documented(make_app):
    app = make_app(rate={"enabled": False, "default": "1 per minute"})
    c = app.test_client()
    assert all(c.get(GALLERIES).status_code == 200 for _ in range(5))
    doc = c.get("/openapi.json").get_json()["paths"]
    assert "429" in doc[GALLERIES]["get"]["responses"] and "429" in doc["/api/v1/videos"]["post"]["responses"]
    assert "429" not in doc["/health"]["get"]["responses"]


def test_redis_counters_are_shared_by_two_app_instances(make_app, redis_url):
    rate = {"default": "4 per minute", "storage_url": redis_url}
    one, two = make_app("a", rate=rate).test_client(), make_app("b", rate=rate).test_client()
    for c in (one, two, one, two):
        assert c.get(GALLERIES).status_code == 200
    _assert_429(two.get(GALLERIES), "4 per 1 minute")
    _assert_429(one.get(GALLERIES), "4 per 1 minute")
    assert one.get(GALLERIES, **_addr("10.0.0.7")).status_code == 200


def test_counts_in_memory_while_redis_is_away(make_app):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = make_app(rate={"default": "3 per minute", "storage_url": f"redis://127.0.0.1:{port}/0"}).test_client()
    assert [c.get(GALLERIES).status_code for _ in range(3)] == [200, 200, 200]  # no 500s
    _assert_429(c.get(GALLERIES), "3 per 1 minute")


def test_storage_follows_the_queue_and_bad_settings_name_their_variable(make_app, monkeypatch):
    from modules.api.limits import storage_url
    from modules.errors import ConfigError
    from modules.settings import load_settings

    assert storage_url(load_settings()) == "memory://"
    assert storage_url(load_settings(queue_url="redis://q:6379/1")) == "redis://q:6379/1"
    assert storage_url(load_settings(queue_url="unix:///run/redis.sock")) == "redis+unix:///run/redis.sock"
    assert storage_url(load_settings(queue_url="redis://q/1", rate={"storage_url": "memory://"})) == "memory://"
    monkeypatch.setenv("FACEREC_RATE_HEAVY", "lots per minute")
    with pytest.raises(ConfigError, match="FACEREC_RATE_HEAVY"):
        load_settings()
    monkeypatch.setenv("FACEREC_RATE_HEAVY", "")
    assert load_settings().rate.heavy == ""  # blank: no such budget
    with pytest.raises(ConfigError, match="counter store 'nosuch://x'"):
        make_app(rate={"storage_url": "nosuch://x"})
