"""Verb ``demo``: the main job on embedded defaults (see stopgrad.demo)."""

from __future__ import annotations

import sys
from pathlib import Path


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .guards import check_output, check_seed

    check_seed("--seed", args.seed)
    check_output(args.out, kind="dir")
    if args.full:
        import torch

        if not torch.cuda.is_available():
            from stopgrad.dynamics import ConfigError

            raise ConfigError("--full", True, "runs rung 3 (ResNet-18) on a GPU, and torch sees no CUDA device")
    run_demo(Path(args.out), seed=args.seed, checks=not args.skip_check, progress=sys.stderr.isatty(),
             experiments=not args.theory_only, full=args.full)
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job on embedded defaults: checks, simulations, figures, report",
                       description="Run stopgrad check, the default linear BYOL flow, a collapse phase diagram and "
                                   "sampled SGD vs the flow; write data, figures and report.md to --out.")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random checks")
    p.add_argument("--skip-check", action="store_true", help="skip stopgrad check (faster)")
    p.add_argument("--theory-only", action="store_true", help="skip the matched real runs (sections 5-7)")
    p.add_argument("--full", action="store_true", help="also rung 3: the ResNet-18 recipe on a GPU")
    p.set_defaults(func=cmd_demo)
