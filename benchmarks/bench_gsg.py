"""A GSG sweep of >= 1000 simulated runs: one batched program vs a Python loop over runs.

Both do the same work per run (same data, model, steps, batch); the loop calls the simulator once per run
(R = 1). The loop is timed on ``--loop-runs`` runs and its per-run time scaled to the sweep size (stated
in the JSON); the batched sweep is timed whole. Threads: 1 (``torch.set_num_threads``) for both.

    .venv/bin/python benchmarks/bench_gsg.py            # writes benchmarks/results/gsg-sweep-cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from stopgrad.dynamics import SiameseData, SiameseSimulation, SiameseSpec, simulate_siamese

OUT = Path(__file__).parent / "results" / "gsg-sweep-cpu.json"


def make(seeds, lrs, steps):
    return SiameseSimulation(steps=steps, n_save=5, eval_size=64,
                             data=SiameseData(n1=8, n_points=32, n_clusters=4, aug_std=0.3),
                             train=SiameseSpec(method="gsg", n2=4, batch=32, loss="cosine"),
                             grid={"lr": list(lrs), "seed": list(seeds)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--loop-runs", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    lrs = [0.01, 0.02, 0.05, 0.1]
    sim = make(range(args.seeds), lrs, args.steps)
    R = len(sim.runs())
    t0 = time.perf_counter()
    ds = simulate_siamese(sim)
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    loop_vals = []
    for r in sim.runs()[: args.loop_runs]:
        one = simulate_siamese(make([r["seed"]], [r["lr"]], args.steps))
        loop_vals.append(float(one["neg_dist"].values[0, -1]))
    t_loop = time.perf_counter() - t0
    per_run_loop = t_loop / args.loop_runs
    # the same runs agree in distribution, not bitwise (a group's sample stream depends on its runs):
    batched_vals = ds["neg_dist"].values[: args.loop_runs, -1]
    doc = {
        "runs": R, "steps": args.steps, "batch": 32, "n1": 8, "n2": 4, "method": "gsg",
        "batched_seconds": t_batched, "loop_runs_timed": args.loop_runs, "loop_seconds_timed": t_loop,
        "loop_seconds_per_run": per_run_loop, "loop_seconds_extrapolated": per_run_loop * R,
        "speedup": per_run_loop * R / t_batched,
        "mean_final_neg_dist": {"batched": float(np.mean(batched_vals)), "loop": float(np.mean(loop_vals))},
        "machine": platform.platform(), "torch_threads": torch.get_num_threads(),
        "note": "loop time measured on loop_runs runs and scaled linearly to all runs; 2-core machine shared with other jobs",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1))
    print(f"{R} runs x {args.steps} steps: batched {t_batched:.1f} s; loop {per_run_loop * 1e3:.0f} ms/run -> "
          f"{per_run_loop * R:.0f} s; speed-up {doc['speedup']:.1f}x")


if __name__ == "__main__":
    main()
