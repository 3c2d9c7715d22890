"""Verb ``compare``: a predicted run against a measured one, on one time axis, with one score per statement."""

from __future__ import annotations


def cmd_compare(args) -> int:
    from stopgrad.analysis import compare, format_comparison, open_dataset, write_netcdf

    predicted = _select(open_dataset(args.predicted, require=("s",)), args.predicted_run, "predicted")
    measured = _select(open_dataset(args.measured, require=("s",)), args.measured_run, "measured")
    options = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None}
    result = compare(predicted, measured, allow_mismatch=args.allow_mismatch or (), **options)
    print(format_comparison(result))
    if args.out:
        print(f"wrote {write_netcdf(result, args.out)}")
    return 0


def _select(ds, run, role: str):
    """The run ``run`` of a sweep file (None: the file as it is)."""
    from stopgrad.analysis import DatasetError

    if run is None:
        return ds
    n = ds.sizes.get("run", 0)
    if not 0 <= run < n:
        raise DatasetError(f"--{role}-run = {run}: the file has {n} runs (allowed 0..{n - 1})" if n else
                           f"--{role}-run = {run}: the file has no run dim")
    return ds.isel(run=[run])


_OPTIONS = {
    "top": (int, "leading modes scored in the table"),
    "align_threshold": (float, "alignment crossing level"),
    "commutator_fraction": (float, "commutator crossing level, a fraction of its value at the first common time"),
    "collapse_tol": (float, "a mode dies when s_j(T) < this x max s(0)"),
    "hyper_rtol": (float, "relative tolerance of the hyperparameter check, flow units"),
    "order": (str, "mode pairing: index, rank (both sorted by s at each time) or auto (rank when a per-mode "
                   "run meets a ranked spectrum)"),
}


def register(sub) -> None:
    import inspect

    from stopgrad.analysis import HYPERPARAMETERS, compare

    defaults = inspect.signature(compare).parameters
    p = sub.add_parser(
        "compare", help="theory vs measurement: aligned trajectories, error table",
        description="Put PREDICTED and MEASURED (contract netCDF files, one run each) on one flow-time axis "
                    "through the unit mapping, print one score per statement and optionally write the "
                    "comparison Dataset. Mismatched units, methods, modes or hyperparameters exit 2.")
    p.add_argument("predicted", help="predicted run (.nc), usually theory in flow time")
    p.add_argument("measured", help="measured run (.nc): steps with lr recorded, or flow time")
    p.add_argument("--out", help="write the comparison Dataset here (.nc, atomically)")
    for role in ("predicted", "measured"):
        p.add_argument(f"--{role}-run", type=int, metavar="I", help=f"compare run I of a sweep in {role.upper()}")
    p.add_argument("--allow-mismatch", metavar="NAMES",
                   help="comma-separated differences to accept on purpose: method, modes (compare the common "
                        f"top modes), hyperparameters (all), or some of {', '.join(HYPERPARAMETERS)}")
    for name, (kind, text) in _OPTIONS.items():
        default = defaults[name].default
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                       help=f"{text} (default {default if isinstance(default, str) else format(default, 'g')})")
    p.set_defaults(func=cmd_compare)
