"""Every figure a test draws is closed after it: pyplot keeps figures until closed, and past 20 open ones
matplotlib warns from inside stopgrad.figures, which the suite turns into an error (pyproject's
filterwarnings), so a test's result must not depend on how many figures earlier tests left open."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")
