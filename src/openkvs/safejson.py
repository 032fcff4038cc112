"""JSON decoding of untrusted input, with its nesting bounded before the parser recurses.

Python's decoder recurses once per nested array or object and raises RecursionError (not a
ValueError) past about a thousand levels, less when called deep in a stack. :func:`loads` scans
the text first (:func:`nesting_depth`, linear, outside strings only) and refuses anything nested
deeper than ``max_depth`` with :class:`JsonDepthError`, a ValueError, so callers that already
turn ValueError into a protocol error need nothing more. ``NaN`` and ``Infinity``, which JSON
does not have, are refused too.
"""

from __future__ import annotations

import json
import re
from typing import Any

# No request or signaling message of the KVS models nests deeper than a handful of levels.
MAX_DEPTH = 64

_SPECIAL = re.compile(r'["\\\[\]{}]')


class JsonDepthError(ValueError):
    pass


def nesting_depth(text: str, stop_after: int | None = None) -> int:
    """The deepest nesting of arrays and objects in ``text``, brackets inside strings ignored.

    Counting stops (and returns) as soon as the depth exceeds ``stop_after``. Malformed text
    gets a number too (an unclosed string hides the rest, stray closers do not go below zero);
    the parser refuses such text afterwards.
    """
    depth = peak = 0
    in_string = False
    escaped_at = -1  # the position of a character escaped by a backslash
    for m in _SPECIAL.finditer(text):
        pos = m.start()
        if pos == escaped_at:
            continue
        c = text[pos]
        if in_string:
            if c == "\\":
                escaped_at = pos + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "[" or c == "{":
            depth += 1
            if depth > peak:
                peak = depth
                if stop_after is not None and peak > stop_after:
                    return peak
        elif c == "]" or c == "}":
            depth = max(0, depth - 1)
    return peak


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted input: ValueError (never RecursionError) on anything bad.

    Bytes are decoded as ``json.loads`` decodes them (UTF-8, -16 or -32, detected); a
    UnicodeDecodeError is a ValueError.
    """
    if isinstance(data, (bytes, bytearray)):
        text = bytes(data).decode(json.detect_encoding(data), "surrogatepass")
    else:
        text = data
    # Fewer openers than the limit cannot nest past it: most input skips the scan.
    openers = text.count("[") + text.count("{")
    if openers > max_depth and nesting_depth(text, stop_after=max_depth) > max_depth:
        raise JsonDepthError(f"JSON nested deeper than {max_depth} levels")
    return json.loads(text, parse_constant=_no_constant)
