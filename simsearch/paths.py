"""File names are bytes: how a name that is not valid UTF-8 is kept, stored and shown without loss.

In memory a path is the `str` Python's `os` functions give and take: undecodable bytes are lone
surrogates U+DC80-U+DCFF (PEP 383, surrogateescape). Databases take only valid Unicode, so the catalog
stores each such byte as the private-use code point U+10FF00 + byte (U+10FF80-U+10FFFF); a name that
really holds one of those rare code points is stored as its UTF-8 bytes the same way, so the mapping is
reversible for every name. Valid UTF-8 names, nearly all of them, are stored unchanged.

Shown to people, an undecodable byte is written `\\xNN` (`display`); JSON carries the surrogate as a
`\\udcNN` escape (`json_text`), which Python's json reads back to the very same path.
"""

from __future__ import annotations

import json
import os
from typing import Any

_BASE = 0x10FF00
_RESERVED = chr(_BASE + 0x80)  # code points from here up stand for single bytes in the catalog


def _plain(text: str) -> bool:
    """No surrogate and no reserved code point: the common case, stored and shown as it is."""
    if text.isascii():  # most paths, and the cheapest test there is: the scan asks for every file
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return not text or max(text) < _RESERVED


def to_catalog(path: str) -> str:
    """The text a database stores for a path (valid Unicode, one text per name)."""
    if path.isascii() or _plain(path):  # isascii first: the scan asks this of every file, thrice
        return path
    out = []
    for ch in path:
        if "\udc80" <= ch <= "\udcff":  # an undecodable byte, as surrogateescape holds it
            out.append(chr(_BASE + ord(ch) - 0xDC00))
        elif ch >= _RESERVED:  # a real reserved code point: its four UTF-8 bytes, each as above
            out.extend(chr(_BASE + b) for b in ch.encode("utf-8"))
        else:
            out.append(ch)
    return "".join(out)


def from_catalog(text: str) -> str:
    """The path a catalog's text stands for (the inverse of to_catalog)."""
    if text.isascii() or max(text) < _RESERVED:
        return text
    data = b"".join(bytes([ord(ch) - _BASE]) if ch >= _RESERVED else ch.encode("utf-8") for ch in text)
    return os.fsdecode(data)


def display(path: str) -> str:
    """For people: undecodable bytes as `\\xNN`, everything else as it is."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path).decode("utf-8", "backslashreplace")


def has_newline(path: str) -> bool:
    return "\n" in path or "\r" in path


def json_text(content: Any, **options: Any) -> str:
    """JSON that is valid UTF-8 text: a path's undecodable bytes travel as `\\udcNN` escapes, which
    Python's json reads back as the very same path."""
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, **options)
    return text if _plain(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")
