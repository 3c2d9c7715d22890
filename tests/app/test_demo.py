"""The demo end to end (slow: about 2 minutes on 2 quiet cores): every reading it reports must agree with the theory."""

import pytest


@pytest.mark.slow
def test_demo_reports_agreement_everywhere(tmp_path):
    from stopgrad.demo import run_demo

    report = run_demo(tmp_path).read_text()
    last = report.strip().splitlines()[-1]
    assert last.startswith("Total time") and "DISAGREES" not in last, last
    for name in ("trajectories.png", "phase-p0-eta.png", "phase-p0-eta.nc", "sampled-vs-ode.png"):
        assert (tmp_path / name).exists(), name
