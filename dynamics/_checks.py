"""Validation helpers shared by the config dataclasses of dynamics and ssl_models.

A failed check raises :class:`ConfigError` whose message names the field, the value and what is
allowed, in one line, so that the CLI can print it without a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

__all__ = ["SEED_MAX", "ConfigError", "check", "check_choice", "check_finite", "check_psd", "check_range", "check_seed"]

#: the largest seed anywhere in stopgrad (configs, grids, ``--seed``): seeds are int64 end to end and
#: never pass through a float, so every seed in [0, SEED_MAX] gives its own stream.
SEED_MAX = 2**63 - 1


class ConfigError(ValueError):
    """An invalid configuration value; ``str(err)`` is one line naming the key, the value and the rule."""

    def __init__(self, key: str, value, rule: str):
        self.key, self.value, self.rule = key, value, rule
        super().__init__(f"{key} = {_show(value)}: {rule}")

    def prefixed(self, prefix: str) -> ConfigError:
        """The same error with the key qualified by a table path, e.g. ``model.`` + ``n1``."""
        return ConfigError(f"{prefix}{self.key}" if prefix else self.key, self.value, self.rule)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(key: str, value, ok: bool, rule: str) -> None:
    """Raise :class:`ConfigError` naming ``key``, ``value`` and ``rule`` unless ``ok``."""
    if not ok:
        raise ConfigError(key, value, rule)


def check_finite(key: str, value) -> None:
    """Raise :class:`ConfigError` unless every entry of ``value`` (scalar or array) is finite."""
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ConfigError(key, value, "must be finite (no NaN or inf)")


def check_range(
    key: str, value, lo: float | None = None, hi: float | None = None, *, lo_open=False, hi_open=False, integer=False
) -> None:
    """Check a finite number (or every entry of a sequence) lies in [lo, hi] (open ends as asked).

    Python integers are compared exactly (never through a float), so an integer too large for a
    float is refused by the range, not by an OverflowError, and 2**53 + 1 stays itself."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise ConfigError(key, value, "must be a number")
        if isinstance(v, (int, np.integer)):
            v = int(v)
        else:
            if not math.isfinite(float(v)):
                raise ConfigError(key, value, "must be finite (no NaN or inf)")
            if integer and not float(v).is_integer():
                raise ConfigError(key, value, "must be an integer")
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
        if bad_lo or bad_hi:
            left = "(" if lo_open else "["
            right = ")" if hi_open else "]"
            lo_s = "-inf" if lo is None else _bound(lo)
            hi_s = "inf" if hi is None else _bound(hi)
            raise ConfigError(key, value, f"must lie in {left}{lo_s}, {hi_s}{right}")


def _bound(x) -> str:
    """A range bound as written in a message: integers exactly (2**63 - 1 is not 9.22337e+18)."""
    return str(int(x)) if isinstance(x, (int, np.integer)) else f"{x:g}"


def check_choice(key: str, value, choices: Iterable[str]) -> None:
    """Check ``value`` is one of ``choices``, exactly (case-sensitive: one spelling per value).

    The one rule for every enum of stopgrad: another spelling (``"SimSiam"``) is refused in one line
    that lists the allowed values and names the intended one."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        rule = "must be one of " + ", ".join(repr(c) for c in choices)
        if isinstance(value, str):
            near = [c for c in choices if isinstance(c, str) and c.lower() == value.strip().lower()]
            if near:
                rule += f" (values are case-sensitive: did you mean {near[0]!r}?)"
        raise ConfigError(key, value, rule)


def check_seed(key: str, value) -> None:
    """Check a random seed: an integer in [0, SEED_MAX] (int64; never a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(key, value, f"must be an integer in [0, 2**63 - 1 = {SEED_MAX}]")
    check_range(key, value, 0, SEED_MAX, integer=True)


def check_psd(key: str, matrix, n: int, *, tol: float = 1e-10) -> np.ndarray:
    """Check an (n, n) finite, symmetric, positive semi-definite matrix; return it as float64."""
    try:
        arr = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(key, matrix, f"must be an {n}x{n} matrix of numbers") from None
    if arr.shape != (n, n):
        raise ConfigError(key, f"shape {arr.shape}", f"must be an {n}x{n} matrix")
    check_finite(key, arr)
    scale = max(1.0, float(np.abs(arr).max()))
    if not np.allclose(arr, arr.T, atol=tol * scale, rtol=0):
        raise ConfigError(key, "a non-symmetric matrix", "must be symmetric")
    lam_min = float(np.linalg.eigvalsh(0.5 * (arr + arr.T)).min())
    if lam_min < -tol * scale:
        raise ConfigError(key, f"a matrix with eigenvalue {lam_min:.3g}", "must be positive semi-definite")
    return 0.5 * (arr + arr.T)
