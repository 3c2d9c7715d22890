"""Checks every verb makes before any work: output paths, devices, seeds and a memory estimate.

A verb loads and validates its config, then calls these, then prints its plan, then works. Each check
raises :class:`~stopgrad.dynamics.ConfigError` (one line naming the option, the value and the rule, exit
status 2 from the CLI), so a bad ``--out`` or a run that cannot fit in memory is refused in a second,
not after the work, and never with a traceback.
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from pathlib import Path

from stopgrad.dynamics import ConfigError, check_seed, saved_bytes_per_run

__all__ = ["available_memory", "check_device", "check_fits", "check_output", "check_seed", "check_steps",
           "format_bytes", "simulation_memory", "simulation_steps", "train_memory"]

#: length of the stability interval of each explicit method on the negative real axis (h * rate <= this):
#: Hairer & Wanner, Solving ODEs II, Fig. IV.2.1 (DOPRI5 ~3.3, DOP853 ~6.0)
STABILITY = {"dopri5": 3.3, "dop853": 6.0}

FLOAT64 = 8  # bytes
FLOAT32 = 4  # bytes: training activations and weights (fp32 master weights even under bf16 autocast)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def _probe_writable(folder: Path) -> str | None:
    """Create and remove a temporary file in ``folder``: the only test that holds for root, read-only
    mounts and pseudo file systems (os.access says yes to root everywhere). Returns the failure or None."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".stopgrad-probe.", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(tmp)
    return None


def check_output(path, *, inputs=(), kind: str = "file", key: str = "--out") -> Path:
    """Refuse an output path that cannot or must not be written, before any work.

    Args:
        path: the output, a file (``kind = "file"``, replaced atomically) or a folder (``kind = "dir"``,
            created if missing).
        inputs: the paths this command reads (configs, Datasets, run folders); the output may not be
            one of them (``simulate c.toml --out c.toml`` would replace the config with the result).
        kind: ``"file"`` or ``"dir"``.
        key: the option named in the message.

    Returns:
        The output as a Path. Missing parent folders are not created here (the writer creates them), but
        the nearest existing one must be a folder this process can write in.

    Raises:
        ConfigError: empty path; an input; an existing folder where a file goes (or a file where a
            folder goes); a device, pipe or socket (never replaced); a path under a file; a folder
            that cannot be written.
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', not {kind!r}")
    text = os.fspath(path) if path is not None else ""
    if not str(text).strip():
        raise ConfigError(key, text, "is empty: give a file name" if kind == "file" else "is empty: give a folder")
    if text.strip() == "-":
        raise ConfigError(key, text, "'-' (standard output) is not supported: give a file name" if kind == "file"
                          else "'-' is not a folder name here: give a folder")
    out = Path(text)
    for inp in inputs:
        if inp is not None and out.exists() and Path(inp).exists() and _same_file(out, Path(inp)):
            raise ConfigError(key, text, f"is also an input ({inp}); writing it would replace it: choose another path")
    if out.exists() or out.is_symlink():
        try:
            mode = os.stat(out).st_mode
        except OSError as exc:
            raise ConfigError(key, text, f"cannot be used ({exc.strerror})") from None
        if kind == "file" and stat.S_ISDIR(mode):
            raise ConfigError(key, text, "is a folder: give a file name (e.g. out/result.nc)")
        if kind == "dir" and not stat.S_ISDIR(mode):
            raise ConfigError(key, text, "exists and is not a folder")
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ConfigError(key, text, "is a device, pipe or socket, not a regular file: it is never replaced")
        folder = out if kind == "dir" else out.parent
    else:
        folder = out.parent
        while not folder.exists():  # the nearest existing ancestor: it must be a folder
            if folder.is_symlink():  # a dangling link
                raise ConfigError(key, text, f"{folder} is a broken symbolic link")
            folder = folder.parent
        if not folder.is_dir():
            raise ConfigError(key, text, f"{folder} is a file, so nothing can be created under it")
    failure = _probe_writable(folder)
    if failure:
        raise ConfigError(key, text, f"cannot write in {folder} ({failure})")
    return out


def check_device(device: str, key: str = "--device") -> str:
    """Check a torch device name for training: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` with a GPU N
    that exists here. Returns the name stripped of spaces."""
    import torch

    allowed = "auto, cpu, cuda or cuda:N"
    name = (device or "").strip()
    if not name:
        raise ConfigError(key, device, f"is empty: use {allowed}")
    kind, _, index = name.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and kind != "cuda"):
        raise ConfigError(key, device, f"must be {allowed}")
    if kind == "cuda":
        if index and not index.isdigit():
            raise ConfigError(key, device, f"the GPU index must be a number: {allowed}")
        if not torch.cuda.is_available():
            raise ConfigError(key, device, "CUDA is not available on this machine: use cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise ConfigError(key, device, f"there are {torch.cuda.device_count()} GPU(s) here (cuda:0 ...)")
    return name


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation: MemAvailable of /proc/meminfo, capped by the
    cgroup's limit; None where neither can be read (then no memory check is made)."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    for cg in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(cg).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < 2**60:
            avail = int(limit) if avail is None else min(avail, int(limit))
        break
    return avail


def format_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} EB"  # pragma: no cover


def check_fits(need: int, detail: str, key: str, value) -> None:
    """Refuse a run whose memory lower bound ``need`` (bytes) exceeds the memory available now."""
    avail = available_memory()
    if avail is not None and need > avail:
        raise ConfigError(key, value, f"needs at least {format_bytes(need)} of memory ({detail}); "
                                      f"{format_bytes(avail)} is available")


def siamese_memory(sim) -> tuple[int, str]:
    """A lower bound on the memory (bytes) :func:`stopgrad.dynamics.simulate_siamese` needs for ``sim``:
    the saved trajectories (about 12 scalars per save and run, float64) and the largest group's evaluation
    distances (eval_size^2 per run, the uniformity's pairwise matrix). Returns (bytes, a short breakdown)."""
    runs = sim.runs()
    R, S, E = len(runs), sim.n_save, sim.eval_size
    groups: dict = {}
    for r in runs:
        key = tuple(str(r[k]) for k in ("method", "batch", "encoder", "predictor", "loss", "queue"))
        groups[key] = groups.get(key, 0) + 1
    parts = {"saved trajectories": R * S * 12 * FLOAT64, "eval distances": max(groups.values()) * E * E * FLOAT64}
    return sum(parts.values()), ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items())


def simulation_memory(sim, n_runs: int | None = None) -> tuple[int, str]:
    """A lower bound on the memory (bytes) :func:`stopgrad.dynamics.simulate` needs for ``sim`` (or for
    ``n_runs`` of its runs: one chunk of a distributed sweep).

    Counts only arrays that certainly exist at once: the saved trajectories of the result (s, p,
    alignment, tau per mode and about 8 scalars per save, float64, per run), the initial draws W(0),
    W_a(0) (R x n2 x n1) for the matrix-type engines, and the n1 x n1 data moments (X, X') where
    they are materialised (non-isotropic data). Solver work arrays come on top, so a run refused
    here could never have finished. Returns (bytes, a short breakdown)."""
    m = sim.model
    R, n1, n2 = sim.n_runs if n_runs is None else int(n_runs), m.n1, m.n2
    parts = {"saved trajectories": R * saved_bytes_per_run(sim)}
    if sim.engine != "modes":
        parts["initial W, W_a"] = 2 * R * n2 * n1 * FLOAT64
    if not m.isotropic or (sim.engine == "matrix" and m.predictor == "rule"):
        parts["data moments"] = 2 * n1 * n1 * FLOAT64
    if sim.engine == "sampled" and sim.sampled is not None and sim.sampled.gradient in ("autograd", "moments"):
        parts["one batch of samples"] = 2 * int(sim.sampled.batch) * n1 * FLOAT64
    need = sum(parts.values())
    detail = f"{R} run(s): " + ", ".join(f"{name} {format_bytes(v)}" for name, v in parts.items() if v)
    return need, detail


def train_memory(cfg) -> tuple[int, str]:
    """A lower bound on the memory (bytes) of one training step of ``cfg`` on one device.

    Counts: the two augmented views of a batch (B x 3 x c x c, float32) and the stem's output of each
    (B x w x c' x c' with w the stem width and c' the side after the stem, stored for the backward pass),
    the head weights (projector and predictor, weights + gradients + SGD momentum, float32), the MoCo
    queue and a synthetic data set's images (uint8). The rest of the network comes on top. Returns (bytes, a short breakdown)."""
    B = cfg.train.batch_size
    side = cfg.augment.crop_size or cfg.data.image_size or 32  # CIFAR's native side when unset
    arch = cfg.encoder.arch
    width = cfg.encoder.width if arch == "convnet" else 64
    stem_side = side if cfg.encoder.stem == "cifar" else math.ceil(side / 4)
    feat = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}.get(arch, 8 * cfg.encoder.width)
    pj = cfg.projector
    dims = [feat] + [pj.hidden_dim] * (pj.layers - 1) + [pj.out_dim]
    head = sum(a * b for a, b in zip(dims[:-1], dims[1:]))
    pr = cfg.predictor
    if pr.kind == "mlp":
        head += 2 * pj.out_dim * pr.hidden_dim
    elif pr.kind in ("linear", "symmetric"):
        head += pj.out_dim**2
    parts = {
        "two views": 2 * B * 3 * side * side * FLOAT32,
        "synthetic images": (2 * cfg.data.synthetic_size * 3 * (cfg.data.image_size or 32) ** 2
                             if cfg.data.name == "synthetic" else 0),  # uint8, train and test splits
        "stem activations": 2 * B * width * stem_side * stem_side * FLOAT32,
        "head weights": 3 * head * FLOAT32,
    }
    if cfg.method.name == "mocov2":
        parts["queue"] = cfg.method.queue_size * pj.out_dim * FLOAT32
    need = sum(parts.values())
    return need, ", ".join(f"{name} {format_bytes(v)}" for name, v in parts.items() if v)


def _values(sim, key: str, scalar) -> list[float]:
    return [float(v) for v in sim.grid.get(key, [scalar])]


def simulation_steps(sim) -> tuple[float, str]:
    """An estimate of the steps ``sim`` needs, and the rate that sets it.

    Sampled SGD: t_end / lr steps, exactly. The flows (adaptive explicit methods): an explicit method is
    stable only for h * rate <= STABILITY[method], so the fastest linear rate of the right-hand side sets
    a step count t_end * rate / STABILITY. The rates counted are the coefficients of the linear terms of
    Eqs. 2-4: the weight decays eta, eta_p, the EMA rate beta, alpha_p eta_p, the data term
    lam |W_p|^2 of dW/dt (|W_p| ~ wp_scale, or the rule's largest eigenvalue 1 + eps) and alpha_p lam |W|^2
    of dW_p/dt (|W| ~ w_scale; s0 and p0 on the per-mode engine), lam the largest eigenvalue of X + X'.
    The largest over the grid. rk4 (fixed steps, bounded by max_steps itself) returns 0."""
    m = sim.model
    T = sim.t_end
    if sim.engine == "sampled":
        lr = sim.sampled.lr if sim.sampled is not None else 0.01
        return T / lr, f"sampled SGD takes t_end / lr = {T:g} / {lr:g} steps"
    if sim.solver.method not in STABILITY:
        return 0.0, ""
    import numpy as np

    if m.data.kind == "isotropic":
        lam = 1.0 + max(_values(sim, "sigma2", m.data.sigma2))
    elif m.data.kind == "additive":
        lam = max(a + b for a, b in zip(m.data.signal, m.data.noise))
    else:
        lam = float(np.abs(np.asarray(m.data.X, float) + np.asarray(m.data.X_prime, float)).sum(1).max())
    alpha = max(_values(sim, "alpha_p", m.alpha_p))
    eta = max(_values(sim, "eta", m.eta))
    eta_p = max(_values(sim, "eta_p", m.eta_pred) + [eta])
    if sim.engine == "modes":
        w2 = max(np.max(np.abs(_values(sim, "s0", 0.0) if "s0" in sim.grid else np.atleast_1d(sim.modes.s0))), 0.0)
        wp = float(np.max(np.abs(_values(sim, "p0", 0.0) if "p0" in sim.grid else np.atleast_1d(sim.modes.p0))))
    else:
        w2 = max(_values(sim, "w_scale", m.init.w_scale)) ** 2
        wp = max(_values(sim, "wp_scale", m.init.wp_scale))
    if m.predictor == "rule" and m.rule is not None:
        wp = max(wp, 1.0 + float(getattr(m.rule, "eps", 0.0)))
    elif m.predictor == "identity":
        wp = 1.0
    rates = {"eta": eta, "eta_p": eta_p, "alpha_p * eta_p": alpha * eta_p,
             "(1 + sigma2) |W_p|^2": lam * wp * wp, "alpha_p (1 + sigma2) |W|^2": alpha * lam * w2}
    if m.method == "byol":
        rates["beta"] = max(_values(sim, "beta", m.beta or 0.0))
    if sim.engine == "symmetrized":
        rates["tau"] = max(_values(sim, "tau", sim.tau))
    name, rate = max(rates.items(), key=lambda kv: kv[1])
    radius = STABILITY[sim.solver.method]
    return T * rate / radius, (f"t_end = {T:g} at the rate {name} ~ {rate:.3g} needs about t_end * rate / "
                               f"{radius:g} steps of {sim.solver.method}")


def check_steps(sim) -> None:
    """Refuse a simulation whose step estimate (:func:`simulation_steps`) exceeds solver.max_steps:
    it could only end in a slow "max steps" failure."""
    steps, detail = simulation_steps(sim)
    limit = sim.solver.max_steps
    if steps > limit:
        raise ConfigError("solver.max_steps", limit, f"too few: {detail} = {steps:.3g}; lower that rate or t_end "
                                                     f"(or raise solver.max_steps to run it anyway)")
