"""Properties of config validation: every valid document builds, every document with one known mistake
is refused with a ConfigError naming exactly that key (the CLI prints it in one line, exit status 2)."""

from __future__ import annotations

import numpy as np
from hypothesis import given

from stopgrad.cmd_dynamics import simulation_from_dict
from stopgrad.config import build
from stopgrad.dynamics import ConfigError, LinearModel, Simulation
from stopgrad.ssl_models import TrainConfig
from stopgrad.testing import strategies as sgst


def _refused_with_key(fn, doc, key: str) -> None:
    try:
        fn(doc)
    except ConfigError as err:
        assert err.key == key, f"error names {err.key!r}, expected {key!r}: {err}"
        assert "\n" not in str(err) and str(err).startswith(f"{key} = ")
    else:
        raise AssertionError(f"a document with a mistake at {key!r} was accepted")


@given(sgst.simulation_documents())
def test_valid_simulation_documents_build_and_keep_their_values(doc):
    """A document of the strategy builds a Simulation whose model, engine and grid are the document's."""
    sim = simulation_from_dict(doc)
    assert isinstance(sim, Simulation)
    assert sim.engine == doc["simulate"]["engine"]
    assert (sim.model.n1, sim.model.n2, sim.model.method) == (doc["model"]["n1"], doc["model"]["n2"],
                                                              doc["model"]["method"])
    assert sim.grid == doc.get("grid", {})
    assert sim.n_runs == int(np.prod([len(v) for v in doc.get("grid", {}).values()]))


@given(sgst.invalid_simulation_documents())
def test_simulation_documents_with_one_mistake_are_refused_naming_the_key(doc_key):
    """Unknown tables and keys, wrong types, NaN/inf, out-of-range values, unknown choices, n2 > n1 and
    bad grids are each refused by one ConfigError whose key is the full path of the mistake."""
    doc, key = doc_key
    _refused_with_key(simulation_from_dict, doc, key)


@given(sgst.invalid_train_documents())
def test_train_documents_with_one_mistake_are_refused_naming_the_key(doc_key):
    """The same for training configs (TrainConfig and its tables)."""
    doc, key = doc_key
    _refused_with_key(lambda d: build(TrainConfig, d), doc, key)


@given(sgst.linear_models())
def test_linear_models_have_psd_moments_of_the_right_size(model):
    """Every valid LinearModel has n2 <= n1 and data moments X, X' that are n1 x n1 symmetric PSD
    (checked by an independent eigendecomposition, to round-off of the check's own tolerance 1e-10)."""
    assert isinstance(model, LinearModel) and 1 <= model.n2 <= model.n1
    X, Xp = model.data.moments(model.n1)
    for M in (X, Xp):
        assert M.shape == (model.n1, model.n1) and np.array_equal(M, M.T)
        assert float(np.linalg.eigvalsh(M).min()) >= -1e-10 * max(1.0, float(np.abs(M).max()))
