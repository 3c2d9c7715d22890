"""A minimal TOML writer for the documents the config strategies generate (tables of scalars, lists and
nested tables): ``tomllib.loads(to_toml(doc)) == doc`` for every such document (tested in
``tests/properties/test_io.py``). Python has a TOML reader (tomllib) but no writer.
"""

from __future__ import annotations

import math
import re

__all__ = ["to_toml", "toml_key", "toml_value"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")  # used with fullmatch: "$" would accept a trailing newline
#: characters a TOML basic string must escape: quote, backslash, and the controls other than tab.
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _escape_char(ch: str) -> str:
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    code = ord(ch)
    if (code < 0x20 and ch != "\t") or code == 0x7F:
        return f"\\u{code:04X}"
    return ch


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string (every Unicode scalar value round-trips)."""
    return '"' + "".join(_escape_char(ch) for ch in text) + '"'


def toml_key(key: str) -> str:
    """A bare key when TOML allows it, else a quoted one."""
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_value(value) -> str:
    """One TOML value: bool, int, float (nan and +-inf included), str or a list of values."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest repr: reads back to the same double
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} as a TOML value")


def to_toml(doc: dict) -> str:
    """A TOML document for ``doc``: top-level scalars first, then one ``[table]`` per nested dict."""
    lines: list[str] = []

    def table(path: list[str], d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        subs = {k: v for k, v in d.items() if isinstance(v, dict)}
        if path and (scalars or not subs):
            lines.append("[" + ".".join(toml_key(p) for p in path) + "]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in scalars.items())
        if scalars or path:
            lines.append("")
        for k, v in subs.items():
            table(path + [k], v)

    table([], doc)
    return "\n".join(lines)
