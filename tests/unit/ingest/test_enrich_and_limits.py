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
