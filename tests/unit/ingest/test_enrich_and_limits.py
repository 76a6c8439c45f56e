from __future__ import annotations

import base64

import pytest

from services.ingest.app import _basic_write_key, _gunzip
from services.ingest.enrich import analyse, device_type
from services.ingest.ratelimit import RateLimiter


@pytest.mark.parametrize(
    ("ua", "device", "browser", "os"),
    [
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
            "Version/17.0 Mobile/15E148 Safari/604.1",
            "mobile",
            "Mobile Safari",
            "iOS",
        ),
        (
            "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 "
            "Mobile/15E148 Safari/604.1",
            "tablet",
            "Mobile Safari",
            "iOS",
        ),
        (
            "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
            "tablet",
            "Chrome",
            "Android",
        ),
        (
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile "
            "Safari/537.36",
            "mobile",
            "Chrome",
            "Android",
        ),
        (
            "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "desktop",
            "Firefox",
            "Ubuntu",
        ),
    ],
)
def test_user_agents(ua: str, device: str, browser: str, os: str) -> None:
    agent = analyse(ua)
    assert (agent.device_type, agent.browser, agent.os, agent.is_bot) == (device, browser, os, False)


def test_bots_and_empty_agents() -> None:
    assert analyse("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)").is_bot
    assert analyse("python-requests/2.31").is_bot
    assert analyse("").device_type == "unknown" and not analyse("").is_bot
    assert device_type("") == "unknown"


def test_rate_limiter_refills_and_says_how_long_to_wait() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=20, clock=lambda: now[0])
    assert limiter.take("p", 20) == 0.0
    assert limiter.take("p", 5) == pytest.approx(0.5)
    assert limiter.take("other", 5) == 0.0  # per project
    now[0] = 1.0
    assert limiter.take("p", 10) == 0.0
    assert RateLimiter.retry_after(0.2) == "1" and RateLimiter.retry_after(2.1) == "3"
    assert RateLimiter(rate=0, burst=0).take("p", 10**6) == 0.0  # 0 = unlimited
    big = RateLimiter(rate=10, burst=10, clock=lambda: 0.0)
    assert big.take("p", 50) == 0.0  # a batch bigger than the burst passes once, when full
    assert big.take("p", 1) > 0


def test_basic_auth_write_key() -> None:
    assert _basic_write_key("Basic " + base64.b64encode(b"wk_abc:").decode()) == "wk_abc"
    assert _basic_write_key("basic " + base64.b64encode(b"wk_abc").decode()) == "wk_abc"
    assert _basic_write_key("Bearer x") is None
    assert _basic_write_key("Basic !!!") is None
    assert _basic_write_key(None) is None


def test_gunzip_is_bounded() -> None:
    import gzip

    assert _gunzip(gzip.compress(b'{"a":1}'), 100) == b'{"a":1}'
    bomb = gzip.compress(b"0" * 10_000_000)
    assert len(_gunzip(bomb, 1000)) == 1001  # stops just past the limit -> 413 upstream
    with pytest.raises(ValueError, match="not valid gzip"):
        _gunzip(b"plain", 100)


def test_long_user_agents_are_cut_before_the_cache() -> None:
    from services.ingest.enrich import MAX_USER_AGENT, _analyse

    _analyse.cache_clear()
    base = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0 Safari/537.36 "
    for i in range(50):
        analyse(base + "x" * 30_000 + str(i))  # 50 distinct 30 KB strings...
    assert _analyse.cache_info().currsize == 1  # ...are one 1,000-character key
    assert all(len(key) <= MAX_USER_AGENT for key in [base + "x" * (MAX_USER_AGENT - len(base))])


def test_refund_gives_back_what_was_taken() -> None:
    limiter = RateLimiter(rate=10, burst=10, clock=lambda: 0.0)
    assert limiter.take("p", 10) == 0.0
    limiter.refund("p", 10)
    assert limiter.take("p", 10) == 0.0
    limiter.refund("p", 100)  # never past the burst
    assert limiter.take("p", 10) == 0.0 and limiter.take("p", 1) > 0
    limiter.refund("unknown", 5)  # nothing to give back to
    assert len(limiter) == 1


def test_client_buckets_stay_bounded_and_keep_the_busy_ones() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=1, burst=5, clock=lambda: now[0], max_keys=100)
    assert limiter.take("busy", 5) == 0.0
    allowed = 0
    for i in range(10_000):  # a stranger with many addresses, over 10 s
        now[0] += 0.001
        limiter.take(("addr", i), 1)
        if i % 50 == 0:
            allowed += limiter.take("busy", 1) == 0.0
        assert len(limiter) <= 100
    # Recently used, so never evicted: it got its refill (1/s), not a fresh burst of 5.
    assert allowed <= 10
    # Buckets that refilled are dropped first: after a quiet spell, new clients find room.
    now[0] += 10
    for i in range(100):
        limiter.take(("later", i), 1)
    assert len(limiter) <= 100 and limiter.take(("later", 99), 5) > 0


def test_client_network_is_the_address_or_its_ipv6_64() -> None:
    from werkstroom.http import client_key

    assert client_key("203.0.113.9", None, False) == "203.0.113.9"
    a = client_key("2001:db8:1:2:aaaa::1", None, False)
    assert a == client_key("2001:db8:1:2:ffff:1:2:3", None, False)  # same /64
    assert a != client_key("2001:db8:1:3::1", None, False)
    assert client_key("::ffff:203.0.113.9", None, False) == "203.0.113.9"
    assert client_key(None, None, False) is None
    assert client_key("", "198.51.100.1", False) is None
    assert client_key("testclient", None, False) == "testclient"
    assert client_key("not:an:address", None, False) == "not:an:address"


def test_forwarded_for_counts_only_when_trusted_and_only_its_last_entry() -> None:
    from werkstroom.http import client_key

    spoofed = "1.1.1.1, 2.2.2.2, 198.51.100.7"
    assert client_key("10.0.0.2", spoofed, False) == "10.0.0.2"  # not trusted: the connection
    assert client_key("10.0.0.2", spoofed, True) == "198.51.100.7"  # what the proxy appended
    assert client_key("10.0.0.2", "198.51.100.7:4431", True) == "198.51.100.7"
    assert client_key("10.0.0.2", "[2001:db8::1]:443", True) == client_key("2001:db8::9", None, False)
    assert client_key("10.0.0.2", " , ", True) == "10.0.0.2"  # empty: fall back to the peer
