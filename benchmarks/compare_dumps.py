"""Compare two ``bench_dynamics.py --dump`` files: bitwise equality (or the largest relative difference) per array.

    python benchmarks/compare_dumps.py BEFORE.npz AFTER.npz
"""

from __future__ import annotations

import sys

import numpy as np


def main() -> int:
    a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
    if sorted(a.files) != sorted(b.files):
        print(f"different arrays: {sorted(set(a.files) ^ set(b.files))}")
        return 1
    all_same = True
    for k in sorted(a.files):
        x, y = a[k], b[k]
        same = x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
        rel = 0.0
        if not same and x.shape == y.shape and x.dtype.kind == "f":
            rel = float(np.nanmax(np.abs(x - y) / np.maximum(np.abs(x), np.finfo(float).tiny)))
        all_same &= same
        print(f"{k:28s} {str(x.shape):22s} {'bitwise equal' if same else f'max rel. difference {rel:.2e}'}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
