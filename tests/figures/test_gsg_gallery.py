"""The gallery's GSG figures from real contract files: the four-view simulator's outputs (``stopgrad simulate``
and ``stopgrad sweep`` on shrunk copies of configs/linear-gsg*.toml), the expected flow from the same initial
weights, and trainer-shaped metrics records with ``neg_dist`` (GSG, reverse GSG, SimSiam)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from stopgrad.analysis import build_dataset, open_dataset, write_netcdf
from stopgrad.cli import main
from stopgrad.dynamics import SiameseData
from stopgrad.dynamics.theory.gsg_checks import flow_dataset, paired_worlds
from stopgrad.figures import gallery_plan, render_gallery

REPO = Path(__file__).resolve().parents[2]
#: shrink a shipped config to a few steps on a small dataset (same tables, same grid keys)
SHRINK = {"steps": 6, "n_save": 3, "eval_size": 16, "n_points": 16, "n1": 6, "n2": 3, "hidden": 4}


def _shrunk(name: str, tmp: Path, seeds=(0, 1), batches=None) -> Path:
    text = (REPO / "configs" / name).read_text()
    for key, value in SHRINK.items():
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
    text = re.sub(r"^seed = .*$", f"seed = {list(seeds)}", text, flags=re.M)
    if batches:
        text = re.sub(r"^batch = \[.*$", f"batch = {batches}", text, flags=re.M)
    path = tmp / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gsg")
    out = {}
    assert main(["simulate", str(_shrunk("linear-gsg.toml", tmp)), "--out", str(tmp / "linear-gsg.nc")]) == 0
    assert main(["sweep", str(_shrunk("linear-gsg-nopred.toml", tmp)), "--out", str(tmp / "linear-gsg-nopred.nc")]) == 0
    assert main(["sweep", str(_shrunk("linear-gsg-batch.toml", tmp, batches=[4, 8])), "--out",
                 str(tmp / "linear-gsg-batch.nc")]) == 0
    for name in ("linear-gsg", "linear-gsg-nopred", "linear-gsg-batch"):
        out[name] = tmp / f"{name}.nc"
    # the two worlds of docs/gsg_results.md §1, tiny: expected flow and sampled from the same weights
    kw = dict(data=SiameseData(n1=4, n_points=6, n_clusters=6, cluster_std=0.0, aug_std=0.3), n2=2, batch=16,
              lr=0.02, steps=4, n_save=3, eval_size=16)
    sampled, _, flows, t = paired_worlds(["simsiam", "gsg", "gsg-reverse"], [0, 1], predictor=True, **kw)
    write_netcdf(sampled, tmp / "worlds-pred-sampled.nc")
    write_netcdf(flow_dataset(flows, [0, 1], t, {**kw, "predictor": True}), tmp / "worlds-pred-flow.nc")
    out["worlds-pred-sampled"], out["worlds-pred-flow"] = tmp / "worlds-pred-sampled.nc", tmp / "worlds-pred-flow.nc"
    # trainer records (metrics.nc shape: measured, probes every 4 steps, epoch coord, config as TOML)
    for method, reverse in (("simsiam", False), ("simsiam-gsg", False), ("simsiam-gsg", True)):
        for seed in (0, 1):
            rng = np.random.default_rng(seed + 10 * reverse + 20 * (method == "simsiam"))
            steps = np.arange(5) * 4.0
            ds = build_dataset({"neg_dist": 10 + rng.standard_normal(5), "std_l2": 0.08 + 0.01 * rng.random(5),
                                "s": rng.random((5, 8))}, time=steps, time_units="step", source="measured",
                               method=method, config=f'[method]\nname = "{method}"\nreverse = {str(reverse).lower()}\n',
                               attrs={"predictor": "none", "seed": seed})
            name = f"{method}{'-reverse' if reverse else ''}-s{seed}"
            write_netcdf(ds.assign_coords(epoch=("time", steps / 8)), tmp / f"{name}.nc")
            out[name] = tmp / f"{name}.nc"
    return out


def _plan(files, names):
    skipped: list[str] = []
    items = gallery_plan({n: open_dataset(files[n]) for n in names}, skipped)
    return {i.name: i for i in items}, skipped


def test_simulate_output_plans_the_neg_dist_figure(files):
    plan, _ = _plan(files, ["linear-gsg"])
    assert plan["gsg-neg-dist-pred"].kind == "gsg-neg-dist"
    fig = plan["gsg-neg-dist-pred"].draw(*plan["gsg-neg-dist-pred"].args, **plan["gsg-neg-dist-pred"].kwargs)
    ds = open_dataset(files["linear-gsg"])
    for line, method in zip(fig.axes[0].lines, ("simsiam", "gsg", "gsg-reverse")):  # the mean over the seeds
        sel = ds.isel(run=np.flatnonzero(ds["method"].values == method))
        np.testing.assert_allclose(line.get_ydata(), sel["neg_dist"].values.mean(0), rtol=1e-12)
        np.testing.assert_allclose(line.get_xdata(), sel["flow_time"].values[0])


def test_flow_and_sampled_worlds_share_one_figure(files):
    plan, _ = _plan(files, ["worlds-pred-flow", "worlds-pred-sampled"])
    worlds = plan["gsg-neg-dist-pred"].args[0]
    assert list(worlds) == ["expected flow", "sampled"]
    fig = plan["gsg-neg-dist-pred"].draw(*plan["gsg-neg-dist-pred"].args)
    labels = [ln.get_label() for ln in fig.axes[0].lines]
    assert labels == [f"{m} ({w})" for w in worlds for m in ("simsiam", "gsg", "gsg-reverse")]


def test_no_predictor_and_batch_sweeps_plan_their_figures(files):
    plan, skipped = _plan(files, ["linear-gsg-nopred", "linear-gsg-batch"])
    assert plan["gsg-no-predictor-linear-gsg-nopred"].kind == "gsg-no-predictor"
    assert plan["gsg-quality-vs-batch-linear-gsg-batch"].kind == "gsg-quality-vs-batch"
    assert "gsg-neg-dist-nopred" not in plan  # the nopred sweep varies the encoder: not averaged over it
    assert any("vary in encoder" in s for s in skipped)
    fig = plan["gsg-quality-vs-batch-linear-gsg-batch"].draw(*plan["gsg-quality-vs-batch-linear-gsg-batch"].args)
    np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [4, 8])


def test_trainer_records_give_the_real_network_figure_with_reverse_gsg(files):
    names = [n for n in files if n.startswith("simsiam")]
    plan, _ = _plan(files, names)
    runs = plan["gsg-real-network"].args[0]
    assert {m: len(v) for m, v in runs.items()} == {"simsiam": 2, "simsiam-gsg": 2, "simsiam-gsg-reverse": 2}
    fig = plan["gsg-real-network"].draw(*plan["gsg-real-network"].args, **plan["gsg-real-network"].kwargs)
    rev = np.stack([open_dataset(files[f"simsiam-gsg-reverse-s{s}"])["neg_dist"].values for s in (0, 1)])
    line = next(ln for ln in fig.axes[0].lines if ln.get_label().startswith("simsiam-gsg-reverse"))
    np.testing.assert_allclose(line.get_ydata(), rev.mean(0), rtol=1e-12)


def test_cli_figures_writes_every_gsg_figure(files, tmp_path, capsys):
    out = tmp_path / "gallery"
    assert main(["figures", *map(str, files.values()), "--out", str(out)]) == 0
    written = {p.name for p in out.iterdir()}
    for stem in ("gsg-neg-dist-pred", "gsg-no-predictor-linear-gsg-nopred", "gsg-quality-vs-batch-linear-gsg-batch",
                 "gsg-real-network"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= written, stem
    assert all((out / n).stat().st_size > 0 for n in written)
    assert render_gallery({}, tmp_path / "empty") == []
