"""The referrer grouped into a source and the campaign's utm_* values (werkstroom/sources.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from werkstroom.sources import MAX_VALUE, NO_CAMPAIGN, campaign_of, host_of, named_source, source_of

PAGE = "https://shop.example/pricing?x=1"


@pytest.mark.parametrize(
    ("referrer", "source"),
    [
        ("", ""),
        ("https://shop.example/", ""),  # the site's own host: a move inside the site
        ("https://www.shop.example/blog", ""),  # with or without www, the same site
        ("HTTPS://SHOP.EXAMPLE/", ""),
        ("https://www.google.com/", "Google"),
        ("https://google.com/search?q=x", "Google"),
        ("https://www.google.co.uk/", "Google"),
        ("https://google.nl/", "Google"),
        ("https://www.bing.com/search?q=a", "Bing"),
        ("https://duckduckgo.com/", "DuckDuckGo"),
        ("https://search.yahoo.com/", "Yahoo!"),
        ("https://yandex.ru/", "Yandex"),
        ("https://yandex.com.tr/", "Yandex"),
        ("https://www.baidu.com/link?url=1", "Baidu"),
        ("https://www.ecosia.org/search", "Ecosia"),
        ("https://l.facebook.com/l.php?u=1", "Facebook"),
        ("https://m.facebook.com/", "Facebook"),
        ("https://www.instagram.com/", "Instagram"),
        ("https://t.co/abc", "X (Twitter)"),
        ("https://twitter.com/someone", "X (Twitter)"),
        ("https://x.com/someone", "X (Twitter)"),
        ("https://www.linkedin.com/feed", "LinkedIn"),
        ("https://old.reddit.com/r/python", "Reddit"),
        ("https://www.youtube.com/watch?v=1", "YouTube"),
        ("https://youtu.be/1", "YouTube"),
        ("https://nl.pinterest.com/", "Pinterest"),
        ("https://www.tiktok.com/", "TikTok"),
        ("https://github.com/werkstroom", "GitHub"),
        ("https://news.ycombinator.com/item?id=1", "Hacker News"),
        ("https://www.example.org/post", "example.org"),  # other sites: the host without www.
        ("https://blog.example.org/post", "blog.example.org"),
        ("http://Example.ORG:8080/", "example.org"),
        ("https://notgoogle.com/", "notgoogle.com"),  # a suffix matches at a dot only
        ("https://ycombinator.com/", "ycombinator.com"),  # news.ycombinator.com is Hacker News, not all of it
        ("android-app://com.google.android.gm/", ""),  # not http(s): no host to group
        ("not a url", ""),
        ("https://[::1", ""),  # unparseable
    ],
)
def test_source_of(referrer: str, source: str) -> None:
    assert source_of(referrer, PAGE) == source


def test_without_a_page_url_any_referrer_host_counts() -> None:
    assert source_of("https://shop.example/", "") == "shop.example"


def test_named_source_matches_suffixes_only_at_labels() -> None:
    assert named_source("mail.google.com") == "Google"
    assert named_source("google.com.evil.example") == ""
    assert named_source("x.co") == ""


def test_host_of() -> None:
    assert host_of("https://WWW.Example.com./a") == "www.example.com"
    assert host_of("ftp://example.com/") == ""
    assert host_of("") == ""


def test_campaign_from_context_wins_over_the_url() -> None:
    campaign = {"source": "newsletter", "medium": "email", "name": "launch", "term": "t", "content": "c"}
    url = "https://shop.example/?utm_source=ignored&utm_medium=ignored"
    assert campaign_of(campaign, url) == {
        "utm_source": "newsletter",
        "utm_medium": "email",
        "utm_campaign": "launch",
        "utm_term": "t",
        "utm_content": "c",
    }


def test_campaign_from_the_url() -> None:
    url = (
        "https://shop.example/p?utm_source=Twitter&UTM_MEDIUM=social&utm_campaign=spring%20sale&utm_term=&x=1"
    )
    assert campaign_of(None, url) == {
        **NO_CAMPAIGN,
        "utm_source": "Twitter",
        "utm_medium": "social",
        "utm_campaign": "spring sale",
    }
    # the first value of a repeated parameter; an empty context.campaign falls back to the URL
    assert campaign_of({}, "https://a.example/?utm_source=a&utm_source=b")["utm_source"] == "a"
    assert campaign_of({"source": 5, "medium": None}, "https://a.example/?utm_source=a")["utm_source"] == "a"


def test_no_campaign() -> None:
    assert campaign_of(None, "https://shop.example/") == NO_CAMPAIGN
    assert campaign_of("not an object", "") == NO_CAMPAIGN
    too_many = "https://a.example/?" + "&".join(f"utm_x{i}=1" for i in range(200))
    assert campaign_of(None, too_many) == NO_CAMPAIGN


def test_values_are_clipped() -> None:
    long = "a" * 1000
    assert len(campaign_of({"source": long}, "")["utm_source"]) == MAX_VALUE
    assert len(campaign_of(None, f"https://a.example/?utm_campaign={long}")["utm_campaign"]) == MAX_VALUE
    assert len(source_of(f"https://{'b' * 60}.{'c' * 60}.{'d' * 60}.{'e' * 60}.example/", PAGE)) == MAX_VALUE


@given(
    st.text(max_size=300), st.text(max_size=300), st.one_of(st.none(), st.dictionaries(st.text(), st.text()))
)
def test_never_raises(referrer: str, url: str, campaign: dict[str, str] | None) -> None:
    assert len(source_of(referrer, url)) <= MAX_VALUE
    assert all(len(v) <= MAX_VALUE for v in campaign_of(campaign, url).values())
