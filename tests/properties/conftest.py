"""Hypothesis profiles of the property suite.

* ``ci`` (the default): a bounded number of examples per property, derandomized (the same examples on
  every run and every machine, so a CI failure reproduces), no deadline (shared CI cores are noisy).
* ``slow``: thousands of examples per property, random; run it with ``HYPOTHESIS_PROFILE=slow`` or
  ``make test-properties-slow``.
* ``dev``: a handful of examples, for editing a property.

Tests that integrate ODEs or build networks take ``HEAVY`` (a fifth of the profile's examples) via
``settings(max_examples=heavy())`` at import time, so the slow profile scales them too.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
CI_EXAMPLES = 30
SLOW_EXAMPLES = 2000

settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=_QUIET)
settings.register_profile("slow", max_examples=SLOW_EXAMPLES, deadline=None, print_blob=True,
                          suppress_health_check=_QUIET)
settings.register_profile("dev", max_examples=5, deadline=None, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
