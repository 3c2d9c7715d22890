"""``stopgrad demo``: the main job on embedded defaults, written to one folder with a report.

Steps (each writes its data and figure, and a line of the report):
1. ``stopgrad check``: every theorem and closed form, numerically (table + JSON).
2. The default linear BYOL flow (64 x 32, the embedded defaults of :class:`Simulation`): eigenvalue
   trajectories, predictor eigenvalues and eigenspace alignment.
3. A per-mode sweep over (p(0), eta) on the invariant parabola: the collapse phase diagram with the
   analytic basin edge p*_-(eta) drawn over it.
4. Sampled SGD against the flow: error versus batch size (from the check's measurement).
5. Theory meets experiment, rung 1: the theory's own linear BYOL trained on real CIFAR-10 against the matrix
   flow with X, X' estimated from the same augmented data (``stopgrad experiment``), from initialisation and
   forward from the measured state at the middle of the run.
6. Rung 2: a small convnet (BN, cosine loss, linear predictor), BYOL and SimSiam, against the per-mode theory
   started from the measured (s_j, p_j, tau_j).
7. Ablations (no stop-gradient, no predictor, no EMA) and DirectPred/DirectCopy, short rung-2 runs.
8. A measured phase diagram on rung 1 (``stopgrad phase``) against the theory's verdicts and boundary.
Every section prints its comparison table and figures, each with a one-line reading.
With ``full``: rung 3, the ResNet-18 recipe, on a GPU.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _line(report: list[str], text: str) -> None:
    report.append(text)
    print(text.replace("![", "[").split("](")[0] if text.startswith("![") else text, flush=True)


#: the demo's matched runs: (folder, config file in configs/, overrides that keep the demo short)
DEMO_EXPERIMENTS = (
    ("rung1-byol", "experiment-rung1-byol.toml", ["linear.steps=1000", "linear.moment_images=4000"]),
    ("rung2-byol", "experiment-rung2-byol.toml", ["train.epochs=2"]),
    ("rung2-simsiam", "experiment-rung2-simsiam.toml", ["train.epochs=2"]),
)
PHASE_CONFIG = "phase-rung1-wd-ema.toml"
FULL_EXPERIMENT = ("rung3-byol", "experiment-rung3-byol.toml", [])
#: rung 1 "agrees" when the median relative error of s over the top modes at the end is below this
#: (finite batch, finite lr and the estimation error of X, X' are each a few per cent here)
RUNG1_AGREEMENT = 0.1


def configs_dir() -> Path:
    """The repository's configs/ folder (the demo runs from a checkout: ``make demo``)."""
    path = Path(__file__).resolve().parents[1] / "configs"
    if not path.is_dir():
        from stopgrad.dynamics import ConfigError

        raise ConfigError("configs", str(path), "not found: run the demo from a checkout of the repository")
    return path


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f} %"


def _figure_readings(folder: Path, name: str, scores: dict, measured, theory) -> list[tuple[str, str]]:
    """(relative figure path, one-line reading) for every figure the experiment folder holds."""
    out = []
    init, fwd = scores.get("init", {}), scores.get("forward", {})
    for png in sorted((folder / "figures").glob("*.png")):
        stem = png.stem
        rel = f"{name}/figures/{png.name}"
        if stem == "trajectories-init":
            text = (f"predicted (lines) against measured (markers) s_j(t), p_j(t) from initialisation: median "
                    f"relative error of s over the top modes {_pct(init.get('s_rel_error_final', np.nan))} at the "
                    f"end, {_pct(init.get('s_rel_error_all', np.nan))} over the run")
        elif stem == "trajectories-forward":
            text = (f"predicted forward from the measured state at step {theory.attrs.get('start_step')} against the "
                    f"rest of the measured run: median relative error of s over the top modes "
                    f"{_pct(fwd.get('s_rel_error_final', np.nan))} at the end, "
                    f"{_pct(fwd.get('s_rel_error_all', np.nan))} over the rest of the run")
        elif stem.startswith("phase-portrait"):
            text = (f"(p, s) against the invariant parabola: median distance of the measured top modes "
                    f"{init.get('parabola_distance_final', np.nan):.3g} at the end (0 on the parabola, 2 at most)")
        elif stem.startswith("phase-line"):
            text = "the 1-D phase line of p on the parabola in the three weight-decay regimes, at this run's sigma^2"
        elif stem.startswith("alignment"):
            text = (f"eigenspace alignment cos(W_p u_j, u_j) of the top modes ends at "
                    f"{init.get('alignment_final_measured', np.nan):.3f} measured, "
                    f"{init.get('alignment_final_predicted', np.nan):.3f} predicted")
        elif stem.startswith("predictor-symmetry"):
            a = measured["asymmetry"].values if "asymmetry" in measured else np.array([np.nan])
            a = a[np.isfinite(a)] if np.isfinite(a).any() else a
            text = f"measured asymmetry ||W_p - W_p^T|| / ||W_p|| goes from {a[0]:.3g} to {a[-1]:.3g}"
        elif stem.startswith("collapse-metrics"):
            v = measured["std_l2"].values if "std_l2" in measured else np.array([np.nan])
            v = v[np.isfinite(v)] if np.isfinite(v).any() else v
            text = f"std of l2-normalised outputs from {v[0]:.3f} to {v[-1]:.3f} (collapse: 0)"
        else:
            text = "see the figure"
        out.append((rel, text))
    return out


def _experiment_section(report: list[str], out: Path, name: str, config: str, overrides: list[str],
                        progress: bool, device: str = "cpu") -> dict:
    from stopgrad.analysis import open_dataset

    from .experiment import run_experiment

    folder = out / name
    summary = run_experiment(configs_dir() / config, folder, device=device, progress=progress, overrides=overrides)
    measured = open_dataset(folder / "measured.nc")
    theory = open_dataset(folder / "theory_forward.nc")
    for which in ("init", "forward"):
        report.append(f"Comparison ({which}; `{name}/compare_{which}.txt`):")
        report.append("")
        report.append("```")
        report.extend((folder / f"compare_{which}.txt").read_text().splitlines())
        report.append("```")
        report.append("")
    for rel, text in _figure_readings(folder, name, summary["scores"], measured, theory):
        report.append(f"![{Path(rel).stem}]({rel})")
        report.append(f"Reading: {text}.")
        report.append("")
    return summary


#: the ablations and predictor rules of the gallery, as overrides of the rung-2 SimSiam run (short: collapse
#: shows early); each is one real training run of the small convnet
ABLATIONS = (
    ("simsiam", {}),
    ("no-stop-gradient", {"method": {"stop_gradient": False}}),
    ("no-predictor", {"predictor": {"kind": "none"}}),
    ("byol", {"method": {"name": "byol", "momentum": 0.99, "momentum_schedule": "constant"}}),
    ("byol-no-ema", {"method": {"name": "byol", "ema": False}}),
    ("directpred", {"predictor": {"kind": "linear", "rule": {"name": "directpred"}}}),
    ("directcopy", {"predictor": {"kind": "linear", "rule": {"name": "directcopy"}}}),
)
ABLATION_STEPS = 32


def _ablation_section(report: list[str], out: Path, progress: bool) -> dict:
    """Short rung-2 runs of the ablations and the DirectPred/DirectCopy rules; the collapse-metrics and
    predictor-rules figures of the gallery; returns the final std_l2 and effective rank of each."""
    from stopgrad.analysis import open_dataset
    from stopgrad.figures import collapse_metrics, predictor_rules, save_figure
    from stopgrad.ssl_models import Trainer, config_to_dict

    from .config import build
    from .experiment import load_experiment

    base = load_experiment(configs_dir() / "experiment-rung2-simsiam.toml").run
    runs, finals = {}, {}
    for name, over in ABLATIONS:
        t = config_to_dict(base)
        for section, values in over.items():
            t[section].update(values)
        t["train"].update(max_steps=ABLATION_STEPS, progress=False)
        folder = out / "ablations" / name
        if not (folder / "metrics.nc").is_file():
            if progress:
                print(f"demo: training the ablation {name} ({ABLATION_STEPS} steps)", flush=True)
            Trainer(build(type(base), t), folder, device="cpu").run()
        ds = open_dataset(folder / "metrics.nc")
        runs[name] = ds
        v = ds["std_l2"].values[np.isfinite(ds["std_l2"].values)]
        r = ds["effective_rank"].values[np.isfinite(ds["effective_rank"].values)]
        finals[name] = (float(v[-1]), float(r[-1]))
    ablations = ("simsiam", "no-stop-gradient", "no-predictor", "byol", "byol-no-ema")
    save_figure(collapse_metrics({k: runs[k] for k in ablations}),
                out / "collapse-metrics")
    save_figure(predictor_rules({k: runs[k] for k in ("simsiam", "directpred", "directcopy")}), out / "predictor-rules")
    d = int(runs["simsiam"].sizes["mode"]) if "mode" in runs["simsiam"].dims else 0
    report.append("![collapse-metrics](collapse-metrics.png)")
    report.append("Reading: std of l2-normalised outputs / effective rank after " + str(ABLATION_STEPS) + " steps: "
                  + ", ".join(f"{k} {a:.3f} / {b:.1f}" for k, (a, b) in finals.items() if k in ablations)
                  + (f" (1/sqrt(d) = {1 / np.sqrt(d):.3f} for uncollapsed outputs; collapse drives both to 0 and 1)."
                     if d else ".")
                  + (" BYOL without EMA ends exactly where SimSiam does (the same loss and targets, the same seed)."
                     if finals["byol-no-ema"] == finals["simsiam"] else ""))
    report.append("")
    report.append("![predictor-rules](predictor-rules.png)")
    report.append("Reading: DirectPred and DirectCopy (W_p set from F-hat) against a learned linear predictor: "
                  + ", ".join(f"{k} std {a:.3f}, effective rank {b:.1f}" for k, (a, b) in finals.items()
                              if k in ("simsiam", "directpred", "directcopy")) + ".")
    report.append("")
    return finals


def run_demo(out: Path, seed: int = 0, checks: bool = True, progress: bool = False, experiments: bool = True,
             full: bool = False) -> Path:
    """Run the demo into ``out``; returns the path of report.md. ``experiments``: sections 5-7 (real
    training, a few minutes); ``full``: rung 3 on a GPU as well."""
    from stopgrad.analysis import write_netcdf
    from stopgrad.dynamics import DataSpec, InitSpec, LinearModel, ModeInit, Simulation, closed_forms, simulate, theorems
    from stopgrad.figures import collapse_phase_diagram, eigenvalue_trajectories, new_figure, save_figure

    from .cmd_dynamics import format_check_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = ["# stopgrad demo", ""]
    verdicts = {}

    if checks:
        results = theorems.run_checks(seed=seed, progress=progress)
        table = format_check_table(results)
        (out / "check.txt").write_text(table + "\n")
        (out / "check.json").write_text(json.dumps([r.__dict__ for r in results], indent=2, default=str))
        n_ok = sum(r.passed for r in results)
        verdicts["check"] = n_ok == len(results)
        _line(report, "## 1. Theorems and closed forms (`stopgrad check`)")
        report.append("")
        report.append("```")
        report.extend(table.splitlines())
        report.append("```")
        report.append(f"Reading: {n_ok}/{len(results)} statements hold to their tolerances.")
        report.append("")
        sampled = next((r for r in results if r.name == "sampled_vs_ode"), None)
    else:
        sampled = None

    sim = Simulation()  # the embedded defaults: linear BYOL 64 x 32, sigma2 0.5, eta 0.01, beta 0.5
    ds = simulate(sim, progress=progress)
    write_netcdf(ds, out / "linear-byol.nc")
    save_figure(eigenvalue_trajectories(ds, title="linear BYOL 64x32 (theory, default config)"), out / "trajectories")
    s_end = ds.s.isel(run=0, time=-1).values
    live = s_end > 1e-6 * s_end.max()
    p_end = ds.p.isel(run=0, time=-1).values[live]
    p_star = float(closed_forms.fixed_points(sim.model.eta, 1.0, sim.model.data.sigma2)[1])
    comm = ds.commutator.isel(run=0).values
    _line(report, "## 2. Default linear BYOL flow")
    report.append("")
    report.append("![trajectories](trajectories.png)")
    report.append(
        f"Reading: {int(live.sum())} of {live.size} modes survive to t = {sim.t_end:g}; their p_j end at "
        f"{p_end.min():.4f}..{p_end.max():.4f}, against the tau = 1 fixed point p*_+ = {p_star:.4f}; the commutator "
        f"||[F, W_p]|| falls from {comm[0]:.3f} to {comm[-1]:.2e} (Theorem 3's eigenspace alignment)."
    )
    report.append("")
    verdicts["trajectories"] = bool(np.all(np.abs(p_end - p_star) < 0.05)) and comm[-1] < comm[0]

    p0 = np.round(np.linspace(0.02, 0.8, 27), 4).tolist()
    etas = np.round(np.linspace(0.0, 0.2, 21), 4).tolist()
    model = LinearModel(n1=1, n2=1, method="simsiam", beta=None, eta=0.05, data=DataSpec(sigma2=0.5),
                        init=InitSpec(wa="copy"))
    phase = simulate(Simulation(model=model, engine="modes", t_end=3000.0, n_save=31, grid={"p0": p0, "eta": etas},
                                modes=ModeInit(on_parabola=True)), progress=progress)
    write_netcdf(phase, out / "phase-p0-eta.nc")
    e = np.linspace(0, float(closed_forms.eta_critical(1.0, 0.5)), 200)
    fig = collapse_phase_diagram(phase, "p0", "eta", boundary=(closed_forms.basin_edge(e, 1.0, 0.5), e),
                                 title="SimSiam mode on the parabola: collapse basin")
    save_figure(fig, out / "phase-p0-eta")
    edge = closed_forms.basin_edge(phase["eta"].values, 1.0, 0.5)
    pred = phase["p0"].values > edge
    got = phase["n_alive"].values > 0
    # a grid point exactly on p*_- starts on the unstable fixed point: theory predicts that it stays there,
    # and round-off decides which way it leaves, so it is reported and not scored
    on_edge = np.abs(phase["p0"].values - edge) < 1e-9
    agree = float((pred == got)[~on_edge].mean())
    _line(report, "## 3. Collapse phase diagram over (p(0), eta)")
    report.append("")
    report.append("![phase](phase-p0-eta.png)")
    report.append(f"Reading: the integrated verdicts agree with the analytic basin edge p*_-(eta) and eta_c = 1/6 on "
                  f"{100 * agree:.1f}% of {int((~on_edge).sum())} grid points"
                  + (f"; {int(on_edge.sum())} point(s) start exactly on the unstable fixed point p*_- and are not scored."
                     if on_edge.any() else "."))
    report.append("")
    verdicts["phase"] = agree == 1.0

    if sampled is not None:
        fig, axes = new_figure(width=3.6, height=2.8)
        ax = axes[0, 0]
        b = np.asarray(sampled.extra["batches"], float)
        rms = np.asarray(sampled.extra["rms"], float)
        ax.loglog(b, rms, "o-", label="sampled SGD vs flow")
        ax.loglog(b, rms[0] * np.sqrt(b[0] / b), "k--", label="batch$^{-1/2}$")
        ax.axhline(sampled.extra["discretisation"], color="C3", ls=":", label="full-batch GD vs flow")
        ax.set_xlabel("batch size")
        ax.set_ylabel("rms relative error in $s$")
        ax.legend()
        save_figure(fig, out / "sampled-vs-ode")
        _line(report, "## 4. Sampled SGD against the flow")
        report.append("")
        report.append("![sampled](sampled-vs-ode.png)")
        report.append(f"Reading: the error falls as batch^{sampled.extra['slope']:.2f} (theory: -0.5), above the step's "
                      f"own discretisation error {sampled.extra['discretisation']:.1e}.")
        report.append("")
        verdicts["sampled"] = sampled.passed

    findings = {}
    if experiments:
        _line(report, "## 5. Theory meets experiment, rung 1: the linear model on real CIFAR-10")
        report.append("")
        name, config, over = DEMO_EXPERIMENTS[0]
        s1 = _experiment_section(report, out, name, config, over, progress)
        err = s1["scores"]["init"]["s_rel_error_final"]
        findings["rung 1"] = (f"s from initialisation within {_pct(err)} (median, top modes, end), forward "
                              f"{_pct(s1['scores']['forward']['s_rel_error_final'])}; "
                              + ("agrees" if err < RUNG1_AGREEMENT else f"DIFFERS by more than {_pct(RUNG1_AGREEMENT)}"))
        _line(report, f"Finding: {findings['rung 1']}.")
        report.append("")
        for part, (name, config, over) in zip("ab", DEMO_EXPERIMENTS[1:]):
            _line(report, f"## 6{part}. Rung 2: {name} (small convnet, cosine loss, linear predictor)")
            report.append("")
            s2 = _experiment_section(report, out, name, config, over, progress)
            sc = s2["scores"]["init"]
            findings[name] = (f"alignment of the top modes {sc['alignment_final_measured']:.3f} measured vs "
                              f"{sc['alignment_final_predicted']:.3f} predicted; s forward error "
                              f"{_pct(s2['scores']['forward']['s_rel_error_final'])}; collapse agreement "
                              f"{_pct(s2['scores']['forward']['collapse_agreement'])}")
            _line(report, f"Finding: {findings[name]}.")
            report.append("")
        _line(report, "## 7. Ablations and predictor rules (rung 2, short runs)")
        report.append("")
        _ablation_section(report, out, progress)
        _line(report, "## 8. A measured phase diagram (rung 1, weight decay x EMA momentum)")
        report.append("")
        from .phase import run_phase_diagram

        ph = run_phase_diagram(configs_dir() / PHASE_CONFIG, out / "phase-rung1", progress=progress)
        report.append("![phase-rung1](phase-rung1/phase.png)")
        report.append(f"Reading: {ph['runs']} real linear runs (one batched job) against the matched matrix-flow sweep: "
                      f"collapse verdicts agree on {ph['agreement_collapse_percent']:.1f} % of the grid, the number of "
                      f"surviving modes on {ph['agreement_n_alive_percent']:.1f} % (within one: "
                      f"{ph['agreement_n_alive_within_1_percent']:.1f} %); analytic eta_c of the top mode "
                      f"{ph['eta_critical_top']:.2f}.")
        report.append("")
        findings["phase rung 1"] = f"collapse verdicts agree on {ph['agreement_collapse_percent']:.1f} %"
    if full:
        name, config, over = FULL_EXPERIMENT
        _line(report, "## 9. Rung 3: the ResNet-18 recipe (GPU)")
        report.append("")
        s3 = _experiment_section(report, out, name, config, over, progress, device="cuda")
        findings[name] = f"s forward error {_pct(s3['scores']['forward']['s_rel_error_final'])}"

    report.append(f"Total time {time.perf_counter() - start:.0f} s. Verdicts: " +
                  ", ".join(f"{k}: {'agrees' if v else 'DISAGREES'}" for k, v in verdicts.items())
                  + (". Theory against measurement: " + "; ".join(f"{k}: {v}" for k, v in findings.items())
                     if findings else ""))
    path = out / "report.md"
    path.write_text("\n".join(report) + "\n")
    print(f"wrote {path}")
    return path
