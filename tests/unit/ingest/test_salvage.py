"""split_batch: a batch body that orjson refuses, cut into items that are judged alone."""

from __future__ import annotations

import orjson
import pytest

from services.ingest.salvage import RawItem, split_batch

GOOD = b'{"type":"page","anonymousId":"a","properties":{"path":"/x","tags":["a]","{b"]}}'


def body(*items: bytes, extra: bytes = b'"writeKey":"wk_1","sentAt":"2026-01-01T00:00:00Z",') -> bytes:
    return b"{" + extra + b'"batch":[' + b",".join(items) + b"]}"


@pytest.mark.parametrize(
    "bad",
    [
        b'{"type":"track","event":"E","properties":{"v":NaN}}',
        b'{"type":"track","event":"E","properties":{"v":-Infinity}}',
        b'{"type":"track","event":"E","properties":{"v":1e400}}',
        b'{"type":"track","event":"\\ud800"}',
        b'{"type":"track","event":"\xff\xfe"}',
        b'{"type":"track","properties":' + b"[" * 2000 + b"]" * 2000 + b"}",
        b"NaN",
    ],
    ids=["nan", "-infinity", "1e400", "lone-surrogate", "invalid-utf8", "depth-2000", "bare-nan"],
)
def test_a_bad_item_is_cut_out_and_the_good_ones_around_it_parse(bad: bytes) -> None:
    raw = body(GOOD, bad, GOOD)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(raw)
    found = split_batch(raw)
    assert found is not None
    envelope, items = found
    assert envelope == {"writeKey": "wk_1", "sentAt": "2026-01-01T00:00:00Z"}
    assert items == [RawItem(GOOD), RawItem(bad), RawItem(GOOD)]
    assert orjson.loads(items[0].raw)["properties"]["tags"] == ["a]", "{b"]


def test_whitespace_and_key_order_do_not_matter() -> None:
    raw = b' {\n "batch" : [ ' + GOOD + b' ,\n NaN ] ,\t"writeKey" : "wk_2" }\n'
    assert split_batch(raw) == ({"writeKey": "wk_2"}, [RawItem(GOOD), RawItem(b"NaN")])


def test_an_envelope_value_that_does_not_parse_is_left_out() -> None:
    raw = b'{"writeKey":"wk_3","sentAt":NaN,"batch":[NaN]}'
    assert split_batch(raw) == ({"writeKey": "wk_3"}, [RawItem(b"NaN")])


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[1,2]",
        b'{"writeKey":"k"}',  # no batch
        b'{"writeKey":"k","batch":NaN}',
        b'{"batch":[' + GOOD + b"}",  # unclosed array
        b'{"batch":[{"a":[}]]}',  # brackets that do not match
        b'{"batch":["unterminated]}',
        b'{"batch":[]} trailing',
        b'{"batch" [1]}',
        b"{}",
    ],
)
def test_a_body_whose_shape_cannot_be_made_out_is_none(raw: bytes) -> None:
    assert split_batch(raw) is None


def test_an_empty_batch() -> None:
    assert split_batch(b'{"batch":[],"x":NaN}') == ({}, [])
