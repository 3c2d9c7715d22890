"""Verb ``figures``: render the figure gallery of contract Datasets (netCDF files) to PNG and PDF."""

from __future__ import annotations

from pathlib import Path


def load_input(path: str | Path):
    """A contract Dataset from ``path``; comparison and phase-diagram Datasets (which carry no ``time``
    or a ``source`` outside theory/sampled/measured) are accepted when they have what the gallery reads.
    Anything else raises DatasetError in one line naming the file and the breach."""
    import xarray as xr

    from stopgrad.analysis import DatasetError, open_dataset
    from stopgrad.figures import is_comparison, is_phase_diagram

    try:
        return open_dataset(path)
    except DatasetError as err:
        one_line = DatasetError(" ".join(str(err).split()))  # the netCDF backends' messages span lines
        try:
            with xr.open_dataset(path) as raw:
                ds = raw.load()
        except Exception:  # unreadable: the contract's own message says so
            raise one_line from None
        if "source" in ds.attrs and (is_comparison(ds) or is_phase_diagram(ds)):
            return ds
        raise one_line from None


def _labels(paths: list[str]) -> list[str]:
    """File stems, made unique with a counter where two inputs share one."""
    out: list[str] = []
    for p in paths:
        stem = Path(p).stem
        label, n = stem, 1
        while label in out:
            n += 1
            label = f"{stem}-{n}"
        out.append(label)
    return out


def cmd_figures(args) -> int:
    from stopgrad.analysis import DatasetError
    from stopgrad.figures import render_gallery

    datasets = {label: load_input(path) for label, path in zip(_labels(args.inputs), args.inputs)}
    written = render_gallery(datasets, Path(args.out), log=print)
    if not written:
        raise DatasetError(f"no figure can be drawn from {', '.join(args.inputs)}: see `stopgrad figures --help` "
                           "for what each figure needs")
    print(f"{len(written) // 2} figure(s) in {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "figures", help="render every gallery figure that the input Datasets allow (PNG and PDF)",
        description="Read contract Datasets (theory, sampled, measured, comparison or phase-diagram .nc files) "
                    "and draw every figure their variables allow: predicted vs measured trajectories "
                    "(comparison), (p, s) phase portraits and the phase line (s, p with sigma2, eta, alpha_p), "
                    "measured phase diagrams (collapsed_measured), alignment and commutator, predictor "
                    "symmetry, collapse metrics, predictor rules, and the GSG figures (negative-pair distance over time "
                    "across the expected flow and sampled sweeps, no-predictor runs, quality vs batch, and real-network "
                    "runs with neg_dist). Files are named after the inputs.")
    p.add_argument("inputs", nargs="+", metavar="IN", help="contract Dataset files (.nc)")
    p.add_argument("--out", required=True, help="output folder for the figures")
    p.set_defaults(func=cmd_figures)
