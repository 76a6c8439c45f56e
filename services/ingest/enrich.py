"""User-Agent enrichment: device type, browser and OS (ua-parser), and bot detection
(crawlerdetect). Both parsers are slow next to the rest of a request, so results are cached
per User-Agent: real traffic repeats a few thousand UA strings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from crawlerdetect import CrawlerDetect
from ua_parser import parse as ua_parse

_crawlers = CrawlerDetect()

_TABLET_HINTS = ("ipad", "tablet", "kindle", "silk/", "playbook", "sm-t", "sm-x")
_MOBILE_HINTS = ("mobi", "iphone", "ipod", "android", "windows phone", "blackberry", "opera mini")


@dataclass(frozen=True, slots=True)
class Agent:
    device_type: str
    browser: str
    browser_version: str
    os: str
    os_version: str
    is_bot: bool


UNKNOWN = Agent("unknown", "", "", "", "", False)


def _version(*parts: str | None) -> str:
    return ".".join(p for p in parts if p)


def device_type(ua: str, device_brand: str | None = None) -> str:
    low = ua.lower()
    if not low:
        return "unknown"
    if (device_brand or "").endswith("Tablet") or any(h in low for h in _TABLET_HINTS):
        return "tablet"
    if "android" in low and "mobile" not in low:
        return "tablet"  # Android browsers without "Mobile" are tablets by Google's convention
    if any(h in low for h in _MOBILE_HINTS):
        return "mobile"
    return "desktop"


#: Real User-Agents stay under ~500 characters. Cut before the cache, so that strangers
#: sending 30 KB ones cannot make its 16,384 entries hold hundreds of MB.
MAX_USER_AGENT = 1000


def analyse(ua: str) -> Agent:
    """Everything the contract says about one User-Agent string."""
    return _analyse(ua[:MAX_USER_AGENT])


@lru_cache(maxsize=16384)
def _analyse(ua: str) -> Agent:
    if not ua:
        return UNKNOWN
    result = ua_parse(ua)
    browser = result.user_agent.family if result.user_agent else "Other"
    os_name = result.os.family if result.os else "Other"
    return Agent(
        device_type=device_type(ua, result.device.brand if result.device else None),
        browser=browser,
        browser_version=_version(result.user_agent.major, result.user_agent.minor)
        if result.user_agent
        else "",
        os=os_name,
        os_version=_version(result.os.major, result.os.minor) if result.os else "",
        is_bot=bool(_crawlers.isCrawler(ua)),
    )


def warm_up() -> None:
    """Compile the parsers' regular expressions before the first request, not during it."""
    analyse(
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
    )
