"""The spectral probe: its F-hat EMA, the analysis instruments it reports, background == inline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stopgrad.analysis import effective_rank, rankme, spectral_quantities, std_of_l2_normalized, uniformity
from stopgrad.ssl_models import ProbeConfig, SpectralProbe


def _feed(probe: SpectralProbe, zs, Wp):
    for step, z in enumerate(zs):
        out = {"z": z, "loss": torch.tensor(-0.1 * step)}
        probe.observe(out)
        probe.record(step, out, z.shape[0] // 2, None, Wp, lr=0.1, ema_momentum=0.99)


def test_probe_values_are_the_analysis_instruments():
    g = torch.Generator().manual_seed(0)
    zs = [torch.randn(40, 6, generator=g) * torch.linspace(3, 0.1, 6) for _ in range(3)]
    Wp = torch.randn(6, 6, generator=g)
    probe = SpectralProbe(ProbeConfig(every=1, rho=0.8, max_samples=512), steps_per_epoch=2)
    _feed(probe, zs, Wp)
    ds = probe.to_dataset("simsiam", "config")
    # F-hat: the first batch's correlation, then rho-EMA of the batches' correlations
    F = [z.double().T @ z.double() / z.shape[0] for z in zs]
    Fhat = [F[0], 0.8 * F[0] + 0.2 * F[1]]
    Fhat.append(0.8 * Fhat[1] + 0.2 * F[2])
    for t in range(3):
        ref = spectral_quantities(Fhat[t], Wp.double())
        np.testing.assert_allclose(ds["s"].values[t], ref["s"].numpy(), rtol=1e-5)
        np.testing.assert_allclose(ds["p"].values[t], ref["p"].numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(ds["alignment"].values[t], ref["alignment"].numpy(), rtol=1e-4, atol=1e-6)
        assert ds["asymmetry"].values[t] == pytest.approx(float(ref["asymmetry"]), rel=1e-5)
        z1 = zs[t][:20].double()
        assert ds["std_l2"].values[t] == pytest.approx(float(std_of_l2_normalized(z1)), rel=1e-9)
        assert ds["effective_rank"].values[t] == pytest.approx(float(effective_rank(z1)), rel=1e-9)
        assert ds["rankme"].values[t] == pytest.approx(float(rankme(z1)), rel=1e-9)
        assert ds["uniformity"].values[t] == pytest.approx(float(uniformity(z1)), rel=1e-9)
    np.testing.assert_allclose(ds["loss"].values, [0.0, -0.1, -0.2], atol=1e-7)
    np.testing.assert_allclose(ds["epoch"].values, [0.0, 0.5, 1.0])
    assert (ds["lr"].values == 0.1).all() and ds.attrs["source"] == "measured"


def test_background_probes_equal_inline_probes():
    g = torch.Generator().manual_seed(1)
    zs = [torch.randn(64, 8, generator=g) for _ in range(5)]
    Wp = torch.randn(8, 8, generator=g)
    inline = SpectralProbe(ProbeConfig(every=1), 4)
    bg = SpectralProbe(ProbeConfig(every=1), 4, background=True)
    _feed(inline, zs, Wp)
    _feed(bg, zs, Wp)
    a, b = inline.to_dataset("m", "c"), bg.to_dataset("m", "c")
    bg.close()
    for name in a.data_vars:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert bg.worker_seconds > 0


def test_loss_is_the_window_mean_and_state_round_trips():
    probe = SpectralProbe(ProbeConfig(every=3), 10)
    z = torch.randn(8, 4)
    for step in range(7):
        out = {"z": z, "loss": torch.tensor(float(step))}
        probe.observe(out)
        if probe.due(step):
            probe.record(step, out, 4, None, None)
    ds = probe.to_dataset("m", "c")
    assert list(ds["time"].values) == [0, 3, 6]
    np.testing.assert_allclose(ds["loss"].values, [0.0, 2.0, 5.0])  # means of steps {0}, {1,2,3}, {4,5,6}
    copy = SpectralProbe(ProbeConfig(every=3), 10)
    copy.load_state_dict(probe.state_dict())
    np.testing.assert_array_equal(copy.to_dataset("m", "c")["s"].values, ds["s"].values)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_cross_view_probe_on_constructed_views(sign):
    """View 2 = sign x view 1 and the target's outputs = 0.5 x the online ones: the cross-view correlation
    is sign x F-hat, so s_cross = sign x s along F-hat's eigenvectors, and tau = 0.5 (target = tau x online,
    Assumption 1). Float32 inputs: agreement to float32 round-off of the correlations (1e-5 relative)."""
    g = torch.Generator().manual_seed(3)
    probe = SpectralProbe(ProbeConfig(every=1, rho=0.7, cross_view=True), steps_per_epoch=4)
    for step in range(3):
        z1 = torch.randn(32, 5, generator=g) * torch.linspace(2, 0.3, 5)
        z = torch.cat([z1, sign * z1])
        out = {"z": z, "z_target": 0.5 * z, "loss": torch.tensor(0.0)}
        probe.observe(out)
        probe.record(step, out, 32, None, torch.eye(5), lr=0.1, ema_momentum=0.99)
    ds = probe.to_dataset("byol", "config")
    np.testing.assert_allclose(ds["s_cross"].values, sign * ds["s"].values, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds["tau"].values, 0.5, rtol=1e-5)
    state = probe.state_dict()  # the cross-view EMAs are part of the checkpointed state
    assert state["cross"]["F"] is not None and state["cross_target"]["F"] is not None
