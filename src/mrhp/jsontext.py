"""The one JSON reader of every input (data lines, requests, configs, per-product files, manifests, headers).

Python refuses to turn a decimal of more than 4,300 digits into an int (a guard against quadratic-time parsing),
with a ValueError that json does not turn into a JSONDecodeError: every reader that catches JSONDecodeError would
let it through as a traceback. Here such a number is a JSONDecodeError at its own position, so each reader names
the file, line and column as for any other malformed JSON."""

from __future__ import annotations

import json
import re

# Python's default limit (sys.get_int_max_str_digits), fixed here so that a changed limit changes nothing.
MAX_INTEGER_DIGITS = 4300
_LONG_INTEGER = re.compile(rf"-?\d{{{MAX_INTEGER_DIGITS + 1},}}")


class _TooLong(Exception):
    pass


def _integer(text: str) -> int:
    if len(text) - text.startswith("-") > MAX_INTEGER_DIGITS:
        raise _TooLong
    return int(text)


def loads(text: str | bytes) -> object:
    """`json.loads`, except that an integer of more than `MAX_INTEGER_DIGITS` digits is a JSONDecodeError."""
    try:
        return json.loads(text, parse_int=_integer)
    except _TooLong:
        document = text.decode("utf-8", "replace") if isinstance(text, bytes | bytearray) else text
        found = _LONG_INTEGER.search(document)
        raise json.JSONDecodeError(f"an integer of more than {MAX_INTEGER_DIGITS} digits",
                                   document, found.start() if found else 0) from None


def integer_text_fits(text: str) -> bool:
    """`int(text)` of a decimal string (as CSV fields hold them) will not fail for its length."""
    return len(text.strip().lstrip("+-").replace(",", "")) <= MAX_INTEGER_DIGITS
