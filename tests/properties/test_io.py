"""Round trips: contract Datasets through netCDF, and configs through TOML, keep everything."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stopgrad.analysis import open_dataset, write_netcdf
from stopgrad.cmd_dynamics import simulation_from_dict
from stopgrad.cmd_train import load_train_config
from stopgrad.config import build, load_toml
from stopgrad.ssl_models import TrainConfig, config_to_toml
from stopgrad.testing import strategies as sgst
from stopgrad.testing import to_toml

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

HEAVY = settings(max_examples=max(3, settings.default.max_examples // 2))


def _same_attr(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


@HEAVY
@given(sgst.contract_datasets())
def test_netcdf_round_trip_keeps_every_variable_coordinate_and_attribute(ds):
    """write_netcdf then open_dataset gives back every variable and coordinate with its dims, dtype and
    values (NaN and inf included, bit for bit: netCDF stores IEEE doubles), and every attribute, on
    the Dataset and on each variable."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_netcdf(ds, Path(tmp) / "run.nc")
        back = open_dataset(path)
        assert os.listdir(tmp) == ["run.nc"]  # the atomic write leaves no temporary file behind
    assert set(back.variables) == set(ds.variables)
    for name, var in ds.variables.items():
        got = back[name]
        assert got.dims == var.dims, name
        assert got.dtype == var.dtype, name
        assert np.array_equal(got.values, var.values, equal_nan=var.dtype.kind == "f"), name
        for key, value in var.attrs.items():
            assert _same_attr(got.attrs.get(key), value), (name, key)
    assert set(back.attrs) == set(ds.attrs)
    for key, value in ds.attrs.items():
        assert _same_attr(back.attrs[key], value), key


@given(st.one_of(sgst.simulation_documents(), sgst.train_documents()))
def test_the_toml_writer_round_trips_every_generated_document(doc):
    """stopgrad.testing.to_toml writes documents that tomllib reads back equal (strings with any
    characters, floats by their shortest repr, nested tables, lists of lists)."""
    assert tomllib.loads(to_toml(doc)) == doc


@settings(max_examples=max(10, settings.default.max_examples))
@given(st.dictionaries(st.text(max_size=6), st.one_of(st.text(), st.floats(), st.integers(-(2**63), 2**63 - 1),
                                                       st.booleans(), st.lists(st.integers(), max_size=3)),
                       max_size=4))
def test_the_toml_writer_round_trips_arbitrary_keys_and_strings(doc):
    """Keys and strings with quotes, backslashes, control characters and non-ASCII text survive; NaN is
    compared as NaN."""
    back = tomllib.loads(to_toml(doc))
    assert back.keys() == doc.keys()
    for k, v in doc.items():
        assert back[k] == v or (isinstance(v, float) and math.isnan(v) and math.isnan(back[k]))


@given(sgst.simulation_documents())
def test_simulation_configs_round_trip_through_a_toml_file(doc):
    """A simulate/sweep document written to a .toml file and read by the CLI's loader builds the same
    Simulation as the document itself (every value survives the file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sim.toml"
        path.write_text(to_toml(doc), encoding="utf-8")
        from_file = simulation_from_dict(load_toml(path))
    assert from_file == simulation_from_dict(doc)


@given(sgst.train_documents())
def test_train_configs_round_trip_through_config_to_toml(doc):
    """config_to_toml (what a run folder's config.toml holds) reads back to an equal TrainConfig, both
    with the builder and with the CLI's loader (which `stopgrad evaluate` and `--resume` use)."""
    cfg = build(TrainConfig, doc)
    text = config_to_toml(cfg)
    assert build(TrainConfig, tomllib.loads(text)) == cfg
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(text, encoding="utf-8")
        assert load_train_config(path) == cfg
