"""Rung 1: how the theory's error on the real linear run shrinks as the batch grows and the learning rate falls.

For each (batch, lr) the rung-1 BYOL experiment (configs/experiment-rung1-byol.toml) is trained to the same
flow time T = lr * steps and compared with the matrix flow from its initial weights (X, X' estimated from
the same augmented data, the same estimate for every run: same moment seed and sample). Reported per run:
the median relative error of s over the top 8 modes at the end and over the run, the measured Theorem 1
residual (``balance``) at the end, and the surviving modes predicted and measured. The error model:
SGD noise ~ sqrt(lr / batch) and the discretisation ~ lr, on top of a floor set by the estimation error
of X, X' (reported as its relative standard error).

    python benchmarks/rung1_scaling.py [--T 5] [--batches 64 256 1024] [--lrs 0.01 0.005]

Writes benchmarks/results/rung1_scaling.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from stopgrad.analysis import open_dataset
from stopgrad.experiment import run_experiment

REPO = Path(__file__).resolve().parents[1]


def estimation_floor(folder: Path, moment_images: int) -> dict:
    """The part of the error that the X, X' estimate alone explains: the same matched theory (same initial
    weights, same horizon) integrated with a second, independent estimate (other augmentation draws),
    compared with the first. Its s error is the floor below which no batch or lr can bring the comparison."""
    import dataclasses

    from stopgrad.analysis import compare, comparison_scores, open_dataset
    from stopgrad.experiment import _rung1_theory, load_experiment
    from stopgrad.ssl_models import DataConfig, LinearRun, load_image_data

    exp = load_experiment(folder / "config.toml")
    measured = open_dataset(folder / "measured.nc")
    cfg = dataclasses.replace(exp.run, seed=exp.run.seed + 1000, moment_images=moment_images)
    run = LinearRun(cfg, load_image_data(DataConfig(name="cifar10", train_subset=cfg.train_subset, test_subset=1)))
    X2, Xp2 = run.estimate_moments()
    alt = folder.parent / (folder.name + "-second-estimate")
    alt.mkdir(exist_ok=True)
    st = dict(np.load(folder / "state.npz"))
    st.update(X=X2, X_prime=Xp2)
    np.savez(alt / "state.npz", **st)
    first = open_dataset(folder / "theory_init.nc")
    second = _rung1_theory(exp, alt, measured, "init")
    sc = comparison_scores(compare(first, second))
    return {"s_rel_error_final": sc["s_rel_error_final"], "s_rel_error_all": sc["s_rel_error_all"],
            "X_relative_difference": float(np.linalg.norm(X2 - np.load(folder / "state.npz")["X"])
                                           / np.linalg.norm(X2))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=float, default=5.0, help="flow time of every run")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.005])
    ap.add_argument("--out", default=str(REPO / "out" / "rung1-scaling"))
    ap.add_argument("--moment-images", type=int, default=10000)
    args = ap.parse_args()
    rows = []
    for lr in args.lrs:
        for b in args.batches:
            steps = int(round(args.T / lr))
            over = [f"linear.batch_size={b}", f"linear.lr={lr}", f"linear.steps={steps}",
                    f"linear.probe_every={max(1, steps // 20)}", f"linear.moment_images={args.moment_images}"]
            folder = Path(args.out) / f"b{b}-lr{lr:g}"
            t0 = time.perf_counter()
            summary = run_experiment(REPO / "configs" / "experiment-rung1-byol.toml", folder, overrides=over,
                                     progress=False)
            meas = open_dataset(folder / "measured.nc")
            theory = open_dataset(folder / "theory_init.nc")
            tol = 1e-3
            alive_m = int((meas["s"].values[-1] > tol * meas["s"].values[0].max()).sum())
            alive_p = int((theory["s"].values[-1] > tol * theory["s"].values[0].max()).sum())
            sc = summary["scores"]["init"]
            rows.append({"batch": b, "lr": lr, "steps": steps, "s_rel_error_final": sc["s_rel_error_final"],
                         "s_rel_error_all": sc["s_rel_error_all"], "p_rel_error_final": sc["p_rel_error_final"],
                         "forward_s_rel_error_final": summary["scores"]["forward"]["s_rel_error_final"],
                         "balance_final": float(meas["balance"].values[-1]), "alive_measured": alive_m,
                         "alive_predicted": alive_p, "collapse_agreement": sc["collapse_agreement"],
                         "seconds": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), flush=True)
    # the estimation error of X, X' (the same estimate for every run): relative standard error over 8 splits
    first = open_dataset(Path(args.out) / f"b{args.batches[0]}-lr{args.lrs[0]:g}" / "measured.nc")
    result = {"T": args.T, "rows": rows, "X_relative_se": first.attrs["X_relative_se"],
              "X_prime_relative_se": first.attrs["X_prime_relative_se"]}
    for lr in args.lrs:
        sub = [r for r in rows if r["lr"] == lr]
        if len(sub) >= 2:
            x = np.log([r["batch"] for r in sub])
            y = np.log([r["s_rel_error_all"] for r in sub])
            result[f"slope_vs_batch_lr{lr:g}"] = float(np.polyfit(x, y, 1)[0])
    result["estimation_floor"] = estimation_floor(Path(args.out) / f"b{args.batches[0]}-lr{args.lrs[0]:g}",
                                                  args.moment_images)
    out = REPO / "benchmarks" / "results" / "rung1_scaling.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"{'batch':>6} {'lr':>7} {'s err end':>10} {'s err run':>10} {'fwd end':>9} {'balance':>9} alive m/p")
    for r in rows:
        print(f"{r['batch']:>6} {r['lr']:>7g} {r['s_rel_error_final']:>10.4f} {r['s_rel_error_all']:>10.4f} "
              f"{r['forward_s_rel_error_final']:>9.4f} {r['balance_final']:>9.2e} {r['alive_measured']}/{r['alive_predicted']}")
    for k, v in result.items():
        if k.startswith("slope"):
            print(f"{k}: {v:.3f} (SGD noise alone: -0.5)")
    print(f"estimation floor (theory with a second X, X' estimate vs the first): {result['estimation_floor']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
