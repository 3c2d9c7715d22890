"""TOML configs -> validated dataclasses.

The science packages define frozen dataclasses that validate their own values (``__post_init__``
raising ConfigError). This module does the part that only a file format needs: unknown keys, wrong
types and NaN/inf are caught here, and every error is re-raised with the full key path
(``model.data.sigma2 = -1: must lie in [0, inf]``) so the CLI can print it in one line.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from pathlib import Path

from stopgrad.dynamics import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "apply_overrides", "build", "load_toml"]


def load_toml(path: str | Path) -> dict:
    """Read a TOML file; a missing or malformed file raises ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config", str(path), "no such file")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", str(path), f"is not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError("config", str(path), "is not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError("config", str(path), f"cannot be read ({exc.strerror})") from None
    if not doc:
        raise ConfigError("config", str(path), "holds no settings (empty, or only comments); "
                                               "start from a file in configs/")
    return doc


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


INT64 = (-(2**63), 2**63 - 1)  # the TOML integer range (TOML 1.0: "64 bit (signed long) range")


def _check_int64(key: str, value: int) -> None:
    if not INT64[0] <= value <= INT64[1]:
        raise ConfigError(key, value, "is outside the 64-bit integer range of TOML [-2**63, 2**63 - 1]")


def _convert(value, tp, key: str):
    """Convert a TOML value to the annotated type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        errors = []
        # a table goes to the dataclass member of the union first
        for arg in sorted(args, key=lambda a: not (dataclasses.is_dataclass(a) and isinstance(value, dict))):
            if not (dataclasses.is_dataclass(arg) or typing.get_origin(arg) or arg in (bool, int, float, str, dict)):
                continue  # a Python-only alternative (e.g. a PredictorRule object)
            try:
                return _convert(value, arg, key)
            except ConfigError as err:
                if err.key != key:  # an error inside a nested table is the real answer
                    raise
                errors.append(err.rule)
        raise ConfigError(key, value, " or ".join(dict.fromkeys(errors)) or "has the wrong type")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"must be a table [{key}]")
        return build(tp, value, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false")
        return value
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(key, value, "must be an integer")
        _check_int64(key, value)
        return value
    if tp is float:
        if not _is_number(value):
            raise ConfigError(key, value, "must be a number")
        if isinstance(value, int):
            _check_int64(key, value)  # TOML integers are 64-bit; float() of a longer one overflows
        if not math.isfinite(value):
            raise ConfigError(key, value, "must be finite (no NaN or inf)")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "must be a string")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, value, "must be a list")
        inner = args[0] if args else float
        return tuple(_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "must be a table")
        out = {}
        for k, v in value.items():
            if not isinstance(v, list) or not all(_is_number(x) for x in v):
                raise ConfigError(f"{key}.{k}", v, "must be a list of numbers")
            for x in v:
                if isinstance(x, int):
                    _check_int64(f"{key}.{k}", x)
                elif not math.isfinite(x):
                    raise ConfigError(f"{key}.{k}", v, "must be finite (no NaN or inf)")
            out[k] = v
        return out
    if tp is typing.Any or tp is object:
        return value
    raise ConfigError(key, value, f"cannot be set from a config file (type {_type_name(tp)})")


def build(cls, table: dict, prefix: str = ""):
    """Construct dataclass ``cls`` from a TOML table, checking keys, types and values."""
    if not isinstance(table, dict):
        raise ConfigError(prefix.rstrip(".") or "config", table, "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in table if k not in fields]
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", table[unknown[0]],
                          f"unknown key; allowed here: {', '.join(fields)}")
    kwargs = {name: _convert(value, hints[name], f"{prefix}{name}") for name, value in table.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.prefixed(prefix) from None


def _parse_value(text: str):
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare string


def apply_overrides(table: dict, overrides: list[str] | None) -> dict:
    """Set ``table.key=value`` items (``--set``) in a TOML table, in place; the values parse as TOML."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError("--set", item, "must look like table.key=value (e.g. train.epochs=1)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = table
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", item, f"{part} is not a table")
        node[parts[-1]] = _parse_value(value.strip())
    return table
