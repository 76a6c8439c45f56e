"""A batch whose body is not valid JSON as a whole, cut into its items so that each is judged alone.

orjson refuses a whole body for one bad byte anywhere in it: NaN or Infinity, invalid UTF-8, a
lone surrogate escape, nesting past 1,024 levels. In a batch, that would lose the good events
beside the bad one. `split_batch` finds the body's top-level keys and the raw text of each
element of its `batch` array, without parsing them; the caller parses each item on its own.

It only runs when orjson failed, so it is off the beacon path. Structure is found with regular
expressions (in C); Python steps only from one bracket or string to the next, and never
recurses, so no depth makes it fail. Its cost is bounded by the body size limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

_WS = re.compile(rb"[ \t\r\n]*")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_STRUCTURE = re.compile(rb'["{}\[\]]')
_SCALAR = re.compile(rb"[^,\]}\s]+")
_CLOSER = {b"{": b"}", b"[": b"]"}


@dataclass(frozen=True, slots=True)
class RawItem:
    """One element of a batch, as the bytes that were sent: parsed (or refused) alone."""

    raw: bytes


class _Malformed(ValueError):
    pass


def split_batch(body: bytes) -> tuple[dict[str, Any], list[RawItem]] | None:
    """The envelope (each top-level key but `batch`, parsed alone; a key whose value does not
    parse is left out, as if it were missing) and the raw items of `batch`. None when the
    body's own shape (an object, and `batch` an array) cannot be made out."""
    try:
        return _split(body)
    except (_Malformed, IndexError):
        return None


def _split(body: bytes) -> tuple[dict[str, Any], list[RawItem]] | None:
    envelope: dict[str, Any] = {}
    items: list[RawItem] | None = None
    pos = _skip_ws(body, 0)
    _expect(body, pos, b"{")
    pos = _skip_ws(body, pos + 1)
    if body[pos : pos + 1] == b"}":
        return None
    while True:
        key_end = _string_end(body, pos)
        try:
            key = orjson.loads(body[pos:key_end])
        except orjson.JSONDecodeError:
            raise _Malformed("key") from None
        pos = _skip_ws(body, key_end)
        _expect(body, pos, b":")
        pos = _skip_ws(body, pos + 1)
        if key == "batch" and body[pos : pos + 1] == b"[":
            items, pos = _elements(body, pos)
        else:
            end = _value_end(body, pos)
            try:
                envelope[key] = orjson.loads(body[pos:end])
            except orjson.JSONDecodeError:
                envelope.pop(key, None)
            pos = end
        pos = _skip_ws(body, pos)
        if body[pos : pos + 1] == b"}":
            break
        _expect(body, pos, b",")
        pos = _skip_ws(body, pos + 1)
    if _skip_ws(body, pos + 1) != len(body) or items is None:
        return None
    return envelope, items


def _elements(body: bytes, pos: int) -> tuple[list[RawItem], int]:
    """The elements of the array that starts at `pos`, and the position after it."""
    items: list[RawItem] = []
    pos = _skip_ws(body, pos + 1)
    if body[pos : pos + 1] == b"]":
        return items, pos + 1
    while True:
        end = _value_end(body, pos)
        items.append(RawItem(body[pos:end]))
        pos = _skip_ws(body, end)
        if body[pos : pos + 1] == b"]":
            return items, pos + 1
        _expect(body, pos, b",")
        pos = _skip_ws(body, pos + 1)


def _value_end(body: bytes, pos: int) -> int:
    """Where the value that starts at `pos` ends: a string, an object or array (brackets
    counted, strings skipped), or a scalar (up to the next delimiter)."""
    first = body[pos : pos + 1]
    if first == b'"':
        return _string_end(body, pos)
    if first not in (b"{", b"["):
        found = _SCALAR.match(body, pos)
        if found is None:
            raise _Malformed("value")
        return found.end()
    closers: list[bytes] = []  # what each open bracket expects: a stray one is no guess
    while True:
        found = _STRUCTURE.search(body, pos)
        if found is None:
            raise _Malformed("unclosed")
        char = found.group()
        if char == b'"':
            pos = _string_end(body, found.start())
            continue
        pos = found.end()
        if char in _CLOSER:
            closers.append(_CLOSER[char])
        elif not closers or closers.pop() != char:
            raise _Malformed("bracket")
        if not closers:
            return pos


def _string_end(body: bytes, pos: int) -> int:
    found = _STRING.match(body, pos)
    if found is None:
        raise _Malformed("string")
    return found.end()


def _skip_ws(body: bytes, pos: int) -> int:
    found = _WS.match(body, pos)
    return found.end() if found is not None else pos


def _expect(body: bytes, pos: int, char: bytes) -> None:
    if body[pos : pos + 1] != char:
        raise _Malformed(char.decode())
