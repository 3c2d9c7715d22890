"""``stopgrad experiment CONFIG --out DIR``: a matched run (real training, matched theory, comparison, figures)
and ``stopgrad phase CONFIG --out DIR``: a measured phase diagram (a batched grid of real runs) against the
theory's verdicts and boundary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _experiment(args: argparse.Namespace) -> int:
    from .experiment import run_experiment

    run_experiment(args.config, Path(args.out), data_root=args.data_root, device=args.device, force=args.force,
                   progress=not args.quiet, overrides=args.set)
    print(f"experiment folder: {args.out} (summary.json, compare_*.txt, figures/)")
    return 0


def _phase(args: argparse.Namespace) -> int:
    from .phase import run_phase_diagram

    run_phase_diagram(args.config, Path(args.out), data_root=args.data_root, force=args.force,
                      progress=not args.quiet)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment", help="a real run beside its matched theory: train, integrate, compare, figures",
        description="Train the run described by CONFIG (configs/experiment-*.toml), integrate the matched "
                    "theory from initialisation and forward from a measured state, compare them with the "
                    "measurement and render the figures. Every stage is cached in DIR.")
    p.add_argument("config", help="experiment TOML ([experiment] rung = 1 or 2)")
    p.add_argument("--out", required=True, metavar="DIR", help="experiment folder (cache of every stage)")
    p.add_argument("--data-root", metavar="PATH", default=None, help="CIFAR-10 folder (default $STOPGRAD_DATA)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (rung 2 and 3; default cpu)")
    p.add_argument("--force", action="store_true", help="redo every stage")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config value, e.g. --set linear.steps=500 (repeatable)")
    p.set_defaults(func=_experiment)

    q = subparsers.add_parser(
        "phase", help="a measured phase diagram: a batched grid of real runs against the theory",
        description="Train the grid of CONFIG's [phase] table as one batched job, integrate the matched "
                    "theory for every grid point, and write the verdicts, the agreement and the figure.")
    q.add_argument("config", help="experiment TOML with a [phase] table")
    q.add_argument("--out", required=True, metavar="DIR")
    q.add_argument("--data-root", metavar="PATH", default=None)
    q.add_argument("--force", action="store_true")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=_phase)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through the stopgrad command")
