"""GSG's implicit repulsion, measured (docs/gsg_theory.md): the numbers of the closing note.

Parts (each writes its Datasets to --out and its numbers to benchmarks/results/gsg_experiments.json):
  worlds   expected flow vs sampled simulator (l2 loss, linear, predictor): SimSiam, GSG, reverse GSG
  nopred   no predictor: collapse verdicts (sampled, cosine loss, linear and two-layer; flow, l2 loss)
  batch    batch-size sweep of SimSiam, GSG, SimCLR, MoCo (kNN accuracy on the clusters)
  batch_mlp  the same for SimCLR and MoCo with the two-layer ReLU encoder, B = 8 and 512

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gsg_experiments.py worlds nopred batch --out out/gsg

Confidence intervals: mean +- 1.96 standard errors over seeds (normal approximation; paired over seeds
where two worlds or two methods start from the same initial weights).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from stopgrad.analysis import write_netcdf
from stopgrad.dynamics import SiameseData, SiameseSimulation, SiameseSpec, simulate_siamese
from stopgrad.dynamics.theory.gsg_checks import FLOW_METRICS as METRICS, flow_dataset, paired_worlds

RESULTS = Path(__file__).parent / "results" / "gsg_experiments.json"
Z95 = 1.96


def ci(x) -> dict:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    se = x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return {"mean": float(x.mean()), "ci95": float(Z95 * se), "n": int(len(x))}


def fmt(c: dict) -> str:
    return f"{c['mean']:.4f} +- {c['ci95']:.4f}"


def worlds(out: Path, n_seeds: int = 16) -> dict:
    methods = ["simsiam", "gsg", "gsg-reverse"]
    data = SiameseData(n1=8, n_points=16, n_clusters=16, cluster_sep=3.0, cluster_std=0.0, aug_std=0.3)
    kw = dict(data=data, n2=4, batch=256, lr=0.02, steps=500, n_save=26)
    res = {}
    for pred in (True, False):
        ds, _, flows, t = paired_worlds(methods, list(range(n_seeds)), predictor=pred, **kw)
        tag = "pred" if pred else "nopred"
        write_netcdf(ds, out / f"worlds-{tag}-sampled.nc")
        flow_vars = {m: np.stack([flows[meth].values[m].numpy() for meth in methods]) for m in METRICS}
        write_netcdf(flow_dataset(flows, np.arange(n_seeds), t, {**kw, "predictor": pred}), out / f"worlds-{tag}-flow.nc")
        part = {"t_end": float(t[-1])}
        for i, meth in enumerate(methods):
            sel = ds.isel(run=slice(i * n_seeds, (i + 1) * n_seeds))
            row = {}
            for m in METRICS:
                s_end = sel[m].values[:, -1]
                f_end = flow_vars[m][i, :, -1]
                row[m] = {"sampled": ci(s_end), "flow": ci(f_end), "sampled_minus_flow": ci(s_end - f_end)}
            row["verdict_sampled"] = {v: int((sel["verdict"].values == v).sum()) for v in np.unique(sel["verdict"].values)}
            row["embed_scale_flow_end_over_start"] = ci(flow_vars["neg_dist"][i, :, -1] / flow_vars["neg_dist"][i, :, 0])
            part[meth] = row
        for a, b in (("gsg", "simsiam"), ("gsg", "gsg-reverse"), ("simsiam", "gsg-reverse")):
            ia, ib = methods.index(a), methods.index(b)
            for m in ("neg_dist", "uniformity"):
                part[f"{a}_minus_{b}_{m}"] = {
                    "flow": ci(flow_vars[m][ia, :, -1] - flow_vars[m][ib, :, -1]),
                    "sampled": ci(ds[m].values[ia * n_seeds:(ia + 1) * n_seeds, -1] - ds[m].values[ib * n_seeds:(ib + 1) * n_seeds, -1])}
        res[tag] = part
        for meth in methods:
            print(f"[worlds {tag}] {meth:12s} " + "  ".join(
                f"{m}: flow {fmt(part[meth][m]['flow'])} sampled {fmt(part[meth][m]['sampled'])} diff {fmt(part[meth][m]['sampled_minus_flow'])}"
                for m in ("neg_dist", "uniformity")), flush=True)
    return res


def nopred(out: Path, n_seeds: int = 8, steps: int = 1000, encoders=("linear", "mlp"),
           methods=("simsiam", "simsiam-random", "gsg", "gsg-reverse"), name: str = "nopred") -> dict:
    sim = SiameseSimulation(steps=steps, n_save=21, data=SiameseData(n1=16, n_points=64, n_clusters=4, cluster_sep=3.0,
                                                                     cluster_std=0.5, aug_std=0.5),
                            train=SiameseSpec(n2=8, hidden=32, predictor=False, loss="cosine", lr=0.05, batch=128),
                            grid={"encoder": list(encoders), "method": list(methods), "seed": list(range(n_seeds))})
    ds = simulate_siamese(sim)
    write_netcdf(ds, out / f"{name}-sampled.nc")
    res = {"steps": steps, "lr": 0.05}
    for enc in encoders:
        for meth in methods:
            sel = ds.where((ds["encoder"] == enc) & (ds["method"] == meth), drop=True)
            row = {m: ci(sel[m].values[:, -1]) for m in ("std_l2", "effective_rank", "neg_dist", "uniformity", "knn_acc")}
            row["verdicts"] = {str(v): int((sel["verdict"].values == v).sum()) for v in np.unique(sel["verdict"].values)}
            res[f"{enc}/{meth}"] = row
            print(f"[{name}] {enc:6s} {meth:14s} std_l2 {fmt(row['std_l2'])} erank {fmt(row['effective_rank'])} "
                  f"knn {fmt(row['knn_acc'])} {row['verdicts']}", flush=True)
    res["isotropic_std_l2"] = 1 / math.sqrt(8)
    return res


def nopred_long(out: Path) -> dict:
    """The two-layer encoder four times longer (4000 steps), for the verdicts."""
    return nopred(out, steps=4000, encoders=("mlp",), methods=("simsiam", "gsg", "gsg-reverse"), name="nopred_long")


def batch(out: Path, n_seeds: int = 4, encoder: str = "linear", methods=("simsiam", "gsg", "simclr", "moco"),
          batches=(8, 32, 128, 512), name: str = "batch") -> dict:
    batches = list(batches)
    sim = SiameseSimulation(steps=600, n_save=7, data=SiameseData(n1=16, n_points=512, n_clusters=8, cluster_sep=2.0,
                                                                    cluster_std=0.7, aug_std=0.7),
                            train=SiameseSpec(n2=8, encoder=encoder, loss="cosine", lr=0.05, temperature=0.5, queue=512),
                            grid={"method": list(methods), "batch": batches, "seed": list(range(n_seeds))})
    ds = simulate_siamese(sim)
    write_netcdf(ds, out / f"{name}-sampled.nc")
    res = {"batches": batches, "encoder": encoder}
    for meth in methods:
        rows = {}
        for B in batches:
            sel = ds.where((ds["method"] == meth) & (ds["batch"] == B), drop=True)
            rows[str(B)] = {m: ci(sel[m].values[:, -1]) for m in ("knn_acc", "effective_rank", "uniformity", "neg_dist")}
            rows[str(B)]["knn_acc_init"] = ci(sel["knn_acc"].values[:, 0])
        rows["loss_512_to_8_knn"] = rows["512"]["knn_acc"]["mean"] - rows["8"]["knn_acc"]["mean"]
        res[meth] = rows
        print(f"[{name}] {meth:8s} " + "  ".join(f"B={B}: {fmt(rows[str(B)]['knn_acc'])}" for B in batches), flush=True)
    return res


def batch_mlp(out: Path) -> dict:
    """The contrastive baselines with the two-layer ReLU encoder (hidden 32), B = 8 and 512."""
    return batch(out, encoder="mlp", methods=("simclr", "moco"), batches=(8, 512), name="batch_mlp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", choices=["worlds", "nopred", "nopred_long", "batch", "batch_mlp"])
    ap.add_argument("--out", default="out/gsg", help="folder for the netCDF files (not committed)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for part in args.parts:
        start = time.perf_counter()
        doc[part] = globals()[part](out)
        doc[part]["wall_seconds"] = time.perf_counter() - start
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
