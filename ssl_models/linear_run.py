"""Rung 1 of the theory-meets-experiment ladder: the theory's own linear model, trained by SGD on real images.

Pipeline of one step (every run of the batch sees the same images and views):

    uint8 images -> two real augmentations (:class:`GPUAugment`) -> a fixed random-feature map
    phi(v) = R vec(v) / sqrt(3 H W) (R ~ N(0, 1), n1 x 3HW, linear in the normalised pixels)
    -> online f = W x, target f_a = W_a x, prediction W_p f.

Loss: the Euclidean loss of Eq. 1, symmetrised over the two views (same expected flow, reference/theory.md
§1.2), ``J = 1/(4B) sum_b ||W_p W x1 - SG(W_a x2)||^2 + ||W_p W x2 - SG(W_a x1)||^2``. Its gradients are
written out (checked against autograd in the tests):

    dJ/dW_p = 1/(2B) sum_v e_v (W x_v)^T,    dJ/dW = 1/(2B) W_p^T sum_v e_v x_v^T,   e_1 = W_p W x1 - W_a x2.

Optimiser: plain SGD (no momentum), exactly torch's convention: ``W -= lr (dJ/dW + wd W)``,
``W_p -= lr alpha (dJ/dW_p + wd_p W_p)`` with ``alpha = predictor_lr_ratio``; then the target
``W_a = m W_a + (1 - m) W`` (BYOL) or ``W_a = W`` (SimSiam). In flow units (``analysis.to_flow``) this is
Eqs. 2-4 with t = lr * step, eta = wd, eta_p = alpha wd_p, beta = (1 - m) / lr.

Measurement: F = W X_hat W^T with the X_hat estimated from the same augmented data
(:func:`stopgrad.analysis.augmentation_moments`), so the measured s, p, alignment, tau are the theory's
quantities of the trained weights; ``balance`` is Theorem 1's residual with C from the initial weights.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from stopgrad.analysis import (
    OptimizerUnits,
    augmentation_moments,
    build_dataset,
    moments_standard_error,
    psd_part,
    spectral_quantities,
    to_flow,
)
from stopgrad.dynamics import ConfigError, check, check_choice, check_range

from .augment import GPUAugment
from .config import AugmentConfig
from .data import ImageData

__all__ = ["LINEAR_GRID_KEYS", "LinearRun", "LinearRunConfig", "random_feature_map"]

LINEAR_GRID_KEYS = ("weight_decay", "ema_momentum", "predictor_lr_ratio", "predictor_weight_decay")
DTYPE = torch.float64


@dataclass(frozen=True)
class LinearRunConfig:
    """A linear BYOL/SimSiam run on real images (optimizer units; see the module docstring).

    Attributes:
        method: "byol" (EMA target) or "simsiam" (W_a = W, stop-gradient).
        n1: random features per image (the theory's input dimension); n2: output dimension.
        lr: SGD learning rate (constant, no momentum). weight_decay: SGD weight decay of W.
        predictor_lr_ratio: alpha_p (the predictor's lr is lr * ratio).
        predictor_weight_decay: SGD weight decay of W_p; None takes weight_decay / predictor_lr_ratio,
            which makes the flow's predictor decay equal to the trunk's (Theorem 1's condition).
        ema_momentum: the target's EMA momentum m (byol).
        batch_size, steps, probe_every: B, the number of SGD steps, steps between measurements.
        w_scale, wp_scale: W(0) ~ N(0, w_scale^2 / n1); W_p(0) ~ N(0, wp_scale^2 / n2) (``wp_init``
            "random"), its symmetric part ("symmetric") or wp_scale * I ("identity").
        wa_init: "copy" (W_a(0) = W(0), BYOL's practice) or "zero" (the paper's simulations).
        seed: initial weights and the training stream; feature_seed: the random-feature map.
        train_subset: images of the CIFAR-10 train split used (the first ones, official order).
        moment_images, moment_views: M images and K views per image for the X, X' estimate.
        augment: the augmentation recipe.
        grid: optional sweep {name: [values]} over LINEAR_GRID_KEYS; runs are the Cartesian product,
            trained together on the same batches.
    """

    method: str = "byol"
    n1: int = 64
    n2: int = 16
    lr: float = 0.02
    weight_decay: float = 0.02
    predictor_lr_ratio: float = 1.0
    predictor_weight_decay: float | None = None
    ema_momentum: float = 0.99
    batch_size: int = 256
    steps: int = 1000
    probe_every: int = 20
    w_scale: float = 1.0
    wp_scale: float = 1.0
    wp_init: str = "symmetric"
    wa_init: str = "copy"
    seed: int = 0
    feature_seed: int = 0
    train_subset: int = 10000
    moment_images: int = 10000
    moment_views: int = 8
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    grid: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("method", self.method, ("byol", "simsiam"))
        for key in ("n1", "n2", "batch_size", "steps", "probe_every", "train_subset", "moment_images"):
            check_range(key, getattr(self, key), 1, 10**9, integer=True)
        check("n2", self.n2, self.n2 <= self.n1, f"must be <= n1 = {self.n1}")
        check_range("moment_views", self.moment_views, 2, 1000, integer=True)
        check_range("lr", self.lr, 0, 10.0, lo_open=True)
        check_range("weight_decay", self.weight_decay, 0, 1e3)
        check_range("predictor_lr_ratio", self.predictor_lr_ratio, 0, 1e3, lo_open=True)
        if self.predictor_weight_decay is not None:
            check_range("predictor_weight_decay", self.predictor_weight_decay, 0, 1e3)
        check_range("ema_momentum", self.ema_momentum, 0, 1)
        check_range("w_scale", self.w_scale, 0, 1e3, lo_open=True)
        check_range("wp_scale", self.wp_scale, 0, 1e3)
        check_choice("wp_init", self.wp_init, ("random", "symmetric", "identity"))
        check_choice("wa_init", self.wa_init, ("copy", "zero"))
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        check_range("feature_seed", self.feature_seed, 0, 2**63 - 1, integer=True)
        check("grid", self.grid, isinstance(self.grid, dict), "must be a table of name = [values]")
        norm = {}
        for key, values in self.grid.items():
            check(f"grid.{key}", key, key in LINEAR_GRID_KEYS, f"cannot be swept; sweepable: {', '.join(LINEAR_GRID_KEYS)}")
            values = list(values) if isinstance(values, (list, tuple, np.ndarray)) else values
            check(f"grid.{key}", values, isinstance(values, list) and len(values) > 0, "must be a non-empty list")
            for v in values:
                try:
                    dataclasses.replace(self, grid={}, **{key: v})
                except ConfigError as err:
                    raise err.prefixed("grid.") from None
            norm[key] = [float(v) for v in values]
        object.__setattr__(self, "grid", norm)

    @property
    def n_runs(self) -> int:
        return math.prod(len(v) for v in self.grid.values()) if self.grid else 1

    def run_table(self) -> dict[str, np.ndarray]:
        """Per-run optimizer hyperparameters, (R,) float64 each, grid order as in ``grid`` (last fastest)."""
        keys = list(self.grid)
        rows = list(itertools.product(*(self.grid[k] for k in keys))) if keys else [()]
        table = {}
        for name in LINEAR_GRID_KEYS:
            if name in keys:
                table[name] = np.array([r[keys.index(name)] for r in rows], dtype=np.float64)
            else:
                default = getattr(self, name)
                table[name] = np.full(len(rows), np.nan if default is None else float(default))
        wd_p = table["predictor_weight_decay"]
        table["predictor_weight_decay"] = np.where(np.isnan(wd_p), table["weight_decay"] / table["predictor_lr_ratio"], wd_p)
        return table

    def flow_table(self) -> dict[str, np.ndarray]:
        """The per-run hyperparameters in flow units through :func:`stopgrad.analysis.to_flow`."""
        opt = self.run_table()
        out = {k: np.empty(self.n_runs) for k in ("eta", "eta_p", "alpha_p", "beta")}
        for r in range(self.n_runs):
            f = to_flow(self.optimizer_units(opt, r))
            out["eta"][r], out["eta_p"][r], out["alpha_p"][r] = f.eta, f.eta_p, f.alpha_p
            out["beta"][r] = math.nan if f.beta is None else f.beta
        return out

    def optimizer_units(self, table: dict[str, np.ndarray], r: int, steps: int = 0) -> OptimizerUnits:
        """Run ``r`` in the unit mapping's terms (SGD without momentum, PyTorch weight-decay convention)."""
        return OptimizerUnits(
            lr=self.lr, weight_decay=float(table["weight_decay"][r]),
            predictor_lr=self.lr * float(table["predictor_lr_ratio"][r]),
            predictor_weight_decay=float(table["predictor_weight_decay"][r]),
            ema_momentum=float(table["ema_momentum"][r]) if self.method == "byol" else None,
            momentum=0.0, steps=steps)


def random_feature_map(n1: int, in_shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """R / sqrt(3 H W) as a float64 (n1, 3 H W) matrix, R ~ N(0, 1) drawn from ``seed``."""
    fan_in = int(np.prod(in_shape))
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n1, fan_in, generator=g, dtype=DTYPE) / math.sqrt(fan_in)


class LinearRun:
    """R linear runs (a grid of hyperparameters) trained on one stream of augmented real images.

    Args:
        cfg: the run description.
        data: images (only ``train_images[:cfg.train_subset]`` are used).
        progress: print a line every 10 % of the steps.
    """

    def __init__(self, cfg: LinearRunConfig, data: ImageData, progress: bool = False):
        self.cfg = cfg
        self.images = data.train_images[: cfg.train_subset]
        self.augment = GPUAugment(cfg.augment, data.image_size, data.mean, data.std)
        self.features = random_feature_map(cfg.n1, tuple(self.images.shape[1:]), cfg.feature_seed)
        self.progress = progress
        self.table = cfg.run_table()
        self.X: np.ndarray | None = None
        self.X_prime: np.ndarray | None = None
        self.moment_seconds = math.nan
        self.moment_se = (math.nan, math.nan)
        self.train_seconds = math.nan

    # ------------------------------------------------------------------------------------------ data
    def embed(self, views: torch.Tensor) -> torch.Tensor:
        """Random features (B, n1) float64 of augmented views (B, 3, H, W)."""
        return views.reshape(views.shape[0], -1).to(DTYPE) @ self.features.T

    def estimate_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """X, X' (n1 x n1) from K augmented views of M images (seeded by ``seed + 1``)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed + 1)
        idx = torch.arange(min(cfg.moment_images, self.images.shape[0]))
        chunk = max(1, 4096 // cfg.moment_views)
        views = np.empty((len(idx), cfg.moment_views, cfg.n1))
        for start in range(0, len(idx), chunk):
            sel = idx[start : start + chunk]
            batch = self.images[sel].repeat_interleave(cfg.moment_views, dim=0)
            views[start : start + len(sel)] = self.embed(self.augment(batch, g)).reshape(len(sel), cfg.moment_views, -1).numpy()
        X, X_prime = augmentation_moments(views)
        self.moment_se = moments_standard_error(views)
        self.X, self.clipped_X = psd_part(X)
        self.X_prime, self.clipped_X_prime = psd_part(X_prime)
        self.moment_seconds = time.perf_counter() - t0
        return self.X, self.X_prime

    # ---------------------------------------------------------------------------------------- weights
    def initial_weights(self) -> dict[str, torch.Tensor]:
        """W(0) (n2, n1), W_p(0) (n2, n2), W_a(0) (n2, n1), float64, from ``seed`` (shared by all runs)."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed)
        W = torch.randn(cfg.n2, cfg.n1, generator=g, dtype=DTYPE) * (cfg.w_scale / math.sqrt(cfg.n1))
        Wp = torch.randn(cfg.n2, cfg.n2, generator=g, dtype=DTYPE) * (cfg.wp_scale / math.sqrt(cfg.n2))
        if cfg.wp_init == "symmetric":
            Wp = 0.5 * (Wp + Wp.T)
        elif cfg.wp_init == "identity":
            Wp = cfg.wp_scale * torch.eye(cfg.n2, dtype=DTYPE)
        Wa = W.clone() if cfg.wa_init == "copy" else torch.zeros_like(W)
        return {"W": W, "Wp": Wp, "Wa": Wa}

    # ---------------------------------------------------------------------------------------- training
    @staticmethod
    def gradients(W, Wp, Wa, x1, x2):
        """Gradients of the symmetrised Euclidean loss and its value, batched over runs.

        Args:
            W, Wa: (R, n2, n1); Wp: (R, n2, n2); x1, x2: (B, n1) the two views' features.
        Returns:
            (dJ/dW, dJ/dW_p, J): (R, n2, n1), (R, n2, n2), (R,).
        """
        b = x1.shape[0]
        f1, f2 = W @ x1.T, W @ x2.T  # (R, n2, B)
        e1 = Wp @ f1 - Wa @ x2.T
        e2 = Wp @ f2 - Wa @ x1.T
        g_p = (e1 @ f1.mT + e2 @ f2.mT) / (2 * b)
        g_w = Wp.mT @ (e1 @ x1 + e2 @ x2) / (2 * b)
        loss = (e1.square().sum(dim=(1, 2)) + e2.square().sum(dim=(1, 2))) / (4 * b)
        return g_w, g_p, loss

    @classmethod
    def sgd_step(cls, W, Wp, Wa, x1, x2, lr, wd, wd_p, ratio, m, byol: bool):
        """One SGD step (torch's convention, no momentum) and the target update; returns (W, Wp, Wa, J).

        ``wd``, ``wd_p``, ``ratio``, ``m`` broadcast against the run axis ((R, 1, 1) tensors or numbers)."""
        g_w, g_p, loss = cls.gradients(W, Wp, Wa if byol else W, x1, x2)
        W_new = W - lr * (g_w + wd * W)
        Wp_new = Wp - lr * ratio * (g_p + wd_p * Wp)
        Wa_new = m * Wa + (1.0 - m) * W_new if byol else W_new
        return W_new, Wp_new, Wa_new, loss

    def measure(self, W, Wp, Wa, step: int, C: torch.Tensor) -> dict[str, torch.Tensor]:
        """The contract quantities of the current weights (F = W X_hat W^T); see the module docstring."""
        X = torch.as_tensor(self.X, dtype=DTYPE)
        F = W @ X @ W.mT
        Fa = W @ X @ Wa.mT
        out = spectral_quantities(F, Wp, Fa)
        flow = self._flow
        t = self.cfg.lr * step
        alpha = torch.as_tensor(flow["alpha_p"], dtype=DTYPE).view(-1, 1, 1)
        eta = torch.as_tensor(flow["eta"], dtype=DTYPE).view(-1, 1, 1)
        resid = W @ W.mT - Wp.mT @ Wp / alpha - torch.exp(-2 * eta * t) * C
        bal = torch.linalg.matrix_norm(resid) / torch.linalg.matrix_norm(C).clamp_min(1e-300)
        exact = torch.as_tensor(np.isclose(flow["eta_p"], flow["eta"], rtol=1e-12, atol=0.0))
        out["balance"] = torch.where(exact, bal, torch.nan)
        out["weight_norm"] = torch.linalg.matrix_norm(W)
        return out

    def run(self, snapshot_steps: tuple[int, ...] = ()) -> dict:
        """Estimate X, X', train every run, and return the records (see :meth:`to_dataset`).

        ``snapshot_steps``: steps at which the weights are kept (``self.snapshots[step]``: W, Wp, Wa), e.g.
        the state that a forward prediction of the theory starts from."""
        cfg = self.cfg
        if self.X is None:
            self.estimate_moments()
        self._flow = cfg.flow_table()
        R = cfg.n_runs
        init = self.initial_weights()
        W = init["W"].expand(R, -1, -1).clone()
        Wp = init["Wp"].expand(R, -1, -1).clone()
        Wa = init["Wa"].expand(R, -1, -1).clone()
        C = (init["W"] @ init["W"].T).expand(R, -1, -1) - Wp.mT @ Wp / torch.as_tensor(
            self._flow["alpha_p"], dtype=DTYPE).view(-1, 1, 1)
        col = lambda name: torch.as_tensor(self.table[name], dtype=DTYPE).view(-1, 1, 1)  # noqa: E731
        wd, wd_p, ratio, m = col("weight_decay"), col("predictor_weight_decay"), col("predictor_lr_ratio"), col("ema_momentum")
        byol = cfg.method == "byol"
        g = torch.Generator().manual_seed(cfg.seed + 2)
        n = self.images.shape[0]
        records, loss_sum, count = {}, torch.zeros(R, dtype=DTYPE), 0
        self.snapshots = {}
        t0 = time.perf_counter()
        for step in range(cfg.steps + 1):
            if step % cfg.probe_every == 0 or step == cfg.steps:
                rec = self.measure(W, Wp, Wa, step, C)
                rec["loss"] = loss_sum / count if count else torch.full((R,), torch.nan, dtype=DTYPE)
                records[step] = {k: v.clone() for k, v in rec.items()}
                loss_sum, count = torch.zeros(R, dtype=DTYPE), 0
                if not all(torch.isfinite(W).all() for W in (W, Wp)):
                    break
            if step in snapshot_steps:
                self.snapshots[step] = {"W": W.clone(), "Wp": Wp.clone(), "Wa": Wa.clone()}
            if step == cfg.steps:
                break
            idx = torch.randint(n, (cfg.batch_size,), generator=g)
            imgs = self.images[idx]
            x1 = self.embed(self.augment(imgs, g))
            x2 = self.embed(self.augment(imgs, g))
            W, Wp, Wa, loss = self.sgd_step(W, Wp, Wa, x1, x2, cfg.lr, wd, wd_p, ratio, m, byol)
            loss_sum += loss
            count += 1
            if self.progress and (step + 1) % max(1, cfg.steps // 10) == 0:
                print(f"linear run: step {step + 1}/{cfg.steps} ({time.perf_counter() - t0:.0f} s)", flush=True)
        self.train_seconds = time.perf_counter() - t0
        self.final = {"W": W, "Wp": Wp, "Wa": Wa}
        self.init = init
        self.records = records
        return records

    def to_dataset(self, config_toml: str = ""):
        """The measured runs as a contract Dataset: dims (run, time, mode), time in optimizer steps."""
        cfg = self.cfg
        steps = sorted(self.records)
        data = {}
        for name in ("s", "p", "alignment", "tau"):
            data[name] = np.stack([self.records[t][name].numpy() for t in steps], axis=1)
        for name in ("commutator", "asymmetry", "balance", "weight_norm", "loss"):
            data[name] = np.stack([self.records[t][name].numpy() for t in steps], axis=1)
        lr = np.full(len(steps), cfg.lr)
        extra = {"lr": (("time",), lr)}
        if cfg.method == "byol" and len(set(self.table["ema_momentum"])) == 1:
            extra["ema_momentum"] = (("time",), np.full(len(steps), self.table["ema_momentum"][0]))
        run_coords = {k: self.table[k] for k in cfg.grid} if cfg.grid else {"seed": np.array([cfg.seed])}
        single = {k: float(v[0]) for k, v in self.table.items() if len(set(v)) == 1}
        attrs = {
            "dataset": "cifar10", "model": "linear", "rung": 1, "n1": cfg.n1, "n2": cfg.n2,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "sgd_momentum": 0.0, "optimizer": "sgd",
            "predictor": "learned", "seed": cfg.seed, "feature_seed": cfg.feature_seed,
            "moment_images": cfg.moment_images, "moment_views": cfg.moment_views,
            "moment_seconds": self.moment_seconds,
            "X_negative_mass": self.clipped_X, "X_prime_negative_mass": self.clipped_X_prime,
            "X_relative_se": self.moment_se[0], "X_prime_relative_se": self.moment_se[1], "train_seconds": self.train_seconds,
            "weight_decay": single.get("weight_decay", math.nan),
            "predictor_lr": cfg.lr * single.get("predictor_lr_ratio", math.nan),
            "predictor_weight_decay": single.get("predictor_weight_decay", math.nan),
            "ema_momentum": single.get("ema_momentum", math.nan) if cfg.method == "byol" else math.nan,
        }
        ds = build_dataset(data, time=np.asarray(steps, dtype=float), time_units="step", source="measured",
                           method=cfg.method, config=config_toml, run_coords=run_coords, extra_vars=extra,
                           attrs=attrs)
        if not cfg.grid:
            ds = ds.isel(run=0, drop=True)
        return ds
