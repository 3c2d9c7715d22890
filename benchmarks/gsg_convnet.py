"""GSG vs SimSiam vs reverse GSG without a predictor on the real small convnet (issue 12, Build 5): collapse
and neg_dist.

Runs ``configs/convnet-simsiam-nopred.toml``, ``configs/convnet-simsiam-gsg-nopred.toml`` and
``configs/convnet-simsiam-gsg-reverse-nopred.toml`` (``method.reverse = true``) over seeds
(``--set train.seed=N``) with the given overrides, then summarises each run's probe record
(``metrics.nc``): std of the l2-normalised outputs, effective rank, uniformity and the mean negative-pair
distance ``neg_dist`` (GSG's own for GSG; for SimSiam the same statistic, partner i + B/2, from the probe),
at the first probe (step 0, initial weights) and the last probe with measurements. The CI is the 95%
t-interval over seeds; differences are paired over seeds (both methods start from the same weights for a
seed).

    OMP_NUM_THREADS=1 STOPGRAD_DATA=/work/shared/data .venv/bin/python benchmarks/gsg_convnet.py \\
        run summary figure --seeds 0 1 2 3 4 --out out/conv --set train.epochs=2 --set eval.knn_every=0 \
        --set eval.knn_at_start=false

The summary goes to benchmarks/results/gsg_convnet_seeds.json and is printed as markdown rows; the figure
(neg_dist and std_l2 over epochs, mean ± 95% t-band) to OUT/fig-convnet-nopred.{png,pdf}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

from stopgrad.analysis import open_dataset

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "gsg_convnet_seeds.json"
METHODS = {"simsiam": "configs/convnet-simsiam-nopred.toml", "simsiam-gsg": "configs/convnet-simsiam-gsg-nopred.toml",
           "simsiam-gsg-reverse": "configs/convnet-simsiam-gsg-reverse-nopred.toml"}
#: paired differences at the start and the end: (name, minuend, subtrahend)
PAIRED = (("gsg_minus_simsiam", "simsiam-gsg", "simsiam"), ("reverse_minus_gsg", "simsiam-gsg-reverse", "simsiam-gsg"),
          ("reverse_minus_simsiam", "simsiam-gsg-reverse", "simsiam"))
METRICS = ("std_l2", "effective_rank", "uniformity", "neg_dist")
CONFIDENCE = 0.95


def t_ci(x) -> dict:
    """Mean and half-width of the two-sided t-interval at CONFIDENCE over the finite entries of x."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": float(x.mean()), "ci95": half, "n": int(n), "values": x.tolist()}


def run(out: Path, seeds: list[int], sets: list[str], methods) -> dict:
    exe = Path(sys.executable).parent / "stopgrad"
    seconds = {}
    for m in methods:
        cfg = METHODS[m]
        for s in seeds:
            d = out / f"{m}-s{s}"
            if (d / "metrics.nc").is_file():
                continue
            cmd = [str(exe), "train", str(REPO / cfg), "--out", str(d), "--device", "cpu", "--set", f"train.seed={s}"]
            for kv in sets:
                cmd += ["--set", kv]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=os.environ.copy(), stdout=subprocess.DEVNULL)
            seconds[f"{m}-s{s}"] = time.perf_counter() - t0
    return seconds


def start_end(ds, var: str) -> tuple[float, float, float]:
    """(value at the first probe, value at the last probe where std_l2 was measured, that probe's step)."""
    ok = np.flatnonzero(np.isfinite(ds["std_l2"].values))
    v = ds[var].values
    return float(v[ok[0]]), float(v[ok[-1]]), float(ds["time"].values[ok[-1]])


def summary(out: Path, seeds: list[int], sets: list[str]) -> dict:
    res: dict = {"setting": {"overrides": sets, "seeds": seeds, "configs": METHODS,
                             "ci": "two-sided t-interval, 95%, over seeds"}, "methods": {}, "paired": {}}
    per = {}
    for m in METHODS:
        vals = {var: ([], []) for var in METRICS}
        for s in seeds:
            ds = open_dataset(out / f"{m}-s{s}" / "metrics.nc")
            for var in METRICS:
                a, b, t_end = start_end(ds, var)
                vals[var][0].append(a)
                vals[var][1].append(b)
            res["setting"]["end_step"] = t_end
            res["setting"]["projector_dim"] = int(ds.sizes["mode"])
        per[m] = vals
        res["methods"][m] = {var: {"start": t_ci(v[0]), "end": t_ci(v[1])} for var, v in vals.items()}
    for name, a, b in PAIRED:
        for i, when in enumerate(("start", "end")):
            res["paired"][f"{name}_{when}"] = {var: t_ci(np.subtract(per[a][var][i], per[b][var][i])) for var in METRICS}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="+", choices=("run", "summary", "figure"))
    ap.add_argument("--out", type=Path, default=Path("out/conv"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                    help="which methods to run (in this order); summary and figure use all of them")
    args = ap.parse_args()
    if "run" in args.parts:
        print("seconds per run:", run(args.out, args.seeds, args.sets, args.methods))
    if "summary" in args.parts:
        res = summary(args.out, args.seeds, args.sets)
        RESULTS.write_text(json.dumps(res, indent=1) + "\n")
        print("| method | metric | start | end |\n|---|---|---|---|")
        for m, r in res["methods"].items():
            for var, c in r.items():
                print(f"| {m} | {var} | {c['start']['mean']:.4f} ± {c['start']['ci95']:.4f} | "
                      f"{c['end']['mean']:.4f} ± {c['end']['ci95']:.4f} |")
        for name, _, _ in PAIRED:
            for var, c in res["paired"][f"{name}_end"].items():
                print(f"| {name} (end, paired) | {var} | | {c['mean']:.4f} ± {c['ci95']:.4f} |")
    if "figure" in args.parts:
        from stopgrad.figures import gsg_real_network_over_time, save_figure

        runs = {m: [open_dataset(args.out / f"{m}-s{s}" / "metrics.nc") for s in args.seeds] for m in METHODS}
        title = f"convnet, CIFAR-10 subset, no predictor ({len(args.seeds)} seeds, 95% t-band)"
        print("figure:", save_figure(gsg_real_network_over_time(runs, title=title), args.out / "fig-convnet-nopred"))


if __name__ == "__main__":
    main()
