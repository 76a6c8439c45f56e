"""Where a visit came from: the referrer grouped into a source, and the campaign's utm_* values.

Pure functions, no I/O: ingest calls `source_of` and `campaign_of` for each event it builds
(services/ingest/segment.py). The write key is public, so anything may arrive here: nothing
raises, and every value is clipped to MAX_VALUE characters.

A source is:
- "" ("Direct / None"): no referrer, one that is not an http(s) URL with a host, or the page's
  own host (a visitor moving between pages of the site);
- a name from SOURCES when the referrer's host is one of its hosts or a subdomain of one
  (google.com, www.google.com and google.co.uk are Google; l.facebook.com is Facebook);
- otherwise the referrer's host, lower case, without a leading `www.`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from urllib.parse import parse_qsl, urlsplit

#: The longest source or utm value kept (a host is at most 253 characters).
MAX_VALUE = 200
#: The utm parameters, in the contract's order, and the key of each in Segment's `context.campaign`.
UTM_FIELDS: tuple[str, ...] = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")
CAMPAIGN_KEYS: dict[str, str] = {
    "utm_source": "source",
    "utm_medium": "medium",
    "utm_campaign": "name",
    "utm_term": "term",
    "utm_content": "content",
}
NO_CAMPAIGN: dict[str, str] = dict.fromkeys(UTM_FIELDS, "")

#: Host suffix -> source name. A host matches a suffix when it equals it or ends with "." + it.
#: Search engines that live under many country domains are listed by each domain they use
#: (google.de, google.co.uk ... are matched by `_google_like` below, not listed one by one).
SOURCES: dict[str, str] = {
    "google.com": "Google",
    "bing.com": "Bing",
    "duckduckgo.com": "DuckDuckGo",
    "search.yahoo.com": "Yahoo!",
    "yahoo.com": "Yahoo!",
    "yandex.ru": "Yandex",
    "yandex.com": "Yandex",
    "ya.ru": "Yandex",
    "baidu.com": "Baidu",
    "ecosia.org": "Ecosia",
    "search.brave.com": "Brave Search",
    "startpage.com": "Startpage",
    "qwant.com": "Qwant",
    "facebook.com": "Facebook",
    "fb.com": "Facebook",
    "fb.me": "Facebook",
    "instagram.com": "Instagram",
    "t.co": "X (Twitter)",
    "twitter.com": "X (Twitter)",
    "x.com": "X (Twitter)",
    "linkedin.com": "LinkedIn",
    "lnkd.in": "LinkedIn",
    "reddit.com": "Reddit",
    "youtube.com": "YouTube",
    "youtu.be": "YouTube",
    "pinterest.com": "Pinterest",
    "tiktok.com": "TikTok",
    "github.com": "GitHub",
    "news.ycombinator.com": "Hacker News",
    "mastodon.social": "Mastodon",
    "bsky.app": "Bluesky",
    "threads.net": "Threads",
    "chatgpt.com": "ChatGPT",
    "perplexity.ai": "Perplexity",
}
#: Engines with a domain per country (google.nl, google.co.uk, yandex.com.tr): matched on the
#: label before the country part.
_COUNTRY_DOMAINS: dict[str, str] = {"google": "Google", "yandex": "Yandex", "bing": "Bing", "yahoo": "Yahoo!"}
_SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "edu", "ne", "or"})


def _clip(value: str) -> str:
    return value[:MAX_VALUE]


@lru_cache(maxsize=8192)
def host_of(url: str) -> str:
    """The lower-case host of an http(s) URL, else "" (never raises). Cached: a site's page URLs
    and its common referrers repeat, and parsing one took 1.5 µs, twice an event."""
    if not url:
        return ""
    try:
        parts = urlsplit(url.strip())
        if parts.scheme.lower() not in ("http", "https"):
            return ""
        host = parts.hostname or ""
    except ValueError:
        return ""
    return host.rstrip(".")


def _bare(host: str) -> str:
    return host[4:] if host.startswith("www.") else host


@lru_cache(maxsize=4096)
def named_source(host: str) -> str:
    """The SOURCES name of a (lower-case) host, else ""."""
    labels = host.split(".")
    for i in range(len(labels) - 1):
        name = SOURCES.get(".".join(labels[i:]))
        if name:
            return name
    # google.nl, www.google.co.uk, yandex.com.tr: the label before a country code (two letters),
    # possibly after a second-level label (co., com.).
    if len(labels) >= 2 and len(labels[-1]) == 2:
        at = -2
        if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL:
            at = -3
        name = _COUNTRY_DOMAINS.get(labels[at])
        if name:
            return name
    return ""


def source_of(referrer: str, page_url: str) -> str:
    """The source of a visit from its referrer URL and the page's URL (module docstring)."""
    host = host_of(referrer)
    if not host:
        return ""
    if _bare(host) == _bare(host_of(page_url)):
        return ""
    return _clip(named_source(host) or _bare(host))


def campaign_of(campaign: object, page_url: str) -> dict[str, str]:
    """The utm_* values: from Segment's `context.campaign` ({source, medium, name, term,
    content}) when it is an object with any of them, else from the page URL's query. Values
    are trimmed and clipped; anything that is not a string is ignored."""
    if isinstance(campaign, Mapping):
        found = {f: _text(campaign.get(key)) for f, key in CAMPAIGN_KEYS.items()}
        if any(found.values()):
            return found
    if "utm_" not in page_url:
        return NO_CAMPAIGN
    try:
        query = urlsplit(page_url).query
        pairs = parse_qsl(query, max_num_fields=100)
    except ValueError:
        return NO_CAMPAIGN
    found = dict(NO_CAMPAIGN)
    for key, value in pairs:
        key = key.lower()
        if key in found and not found[key]:
            found[key] = _clip(value.strip())
    return found


def _text(value: object) -> str:
    return _clip(value.strip()) if isinstance(value, str) else ""
