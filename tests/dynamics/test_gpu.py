"""GPU runs of the batched integrator (skipped without CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stopgrad.dynamics import LinearModel, Simulation, Solver, simulate

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_sweep_matches_the_cpu():
    model = LinearModel(n1=16, n2=8, method="byol", beta=0.5, eta=0.02)
    grid = {"eta": [0.0, 0.02], "seed": list(range(8))}
    cpu = simulate(Simulation(model=model, t_end=50.0, n_save=6, grid=grid, solver=Solver(rtol=1e-9, atol=1e-11)))
    gpu = simulate(Simulation(model=model, t_end=50.0, n_save=6, grid=grid,
                              solver=Solver(rtol=1e-9, atol=1e-11, device="cuda")))
    assert gpu.attrs["backend"] == "torch"
    assert np.allclose(gpu.s.values, cpu.s.values, rtol=1e-6, atol=1e-9)
