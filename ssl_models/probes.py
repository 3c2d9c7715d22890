"""Spectral probes of a training run, recorded into the design's xarray data contract (``source = "measured"``).

Every ``probe.every`` optimizer steps, from the step's batch (before its update is applied):

* ``s`` (time, mode): eigenvalues, descending, of F-hat, the running (rho-EMA, un-centred) correlation of
  the online projector outputs -- the predictor rule's own F-hat when the method has a rule, else a
  probe-owned one updated every step with ``probe.rho``;
* ``p``, ``alignment`` (time, mode) and ``commutator``, ``asymmetry`` (time), for linear predictors, from
  :func:`stopgrad.analysis.spectral_quantities` (p_j = u_j^T W_p u_j, cos(W_p u_j, u_j));
* ``std_l2``, ``effective_rank`` (Roy-Vetterli, singular values), ``rankme``, ``uniformity`` (t = 2) of the
  first view's projector outputs (at most ``probe.max_samples`` rows) and ``align_loss`` between the two
  views' outputs; one SVD serves both ranks (``analysis.entropy_rank`` of the singular values is exactly
  what ``effective_rank``/``rankme`` compute);
* ``loss``: the mean training loss over the steps since the previous probe (this one included);
* ``neg_dist`` (GSG): the mean Euclidean distance of the negative pairs over the same steps;
* ``knn_acc`` at the end of each evaluated epoch (NaN elsewhere).

Time is the number of optimizer updates applied before the measurement (``attrs["units"] = "step"``), with
``epoch`` (= time / steps_per_epoch) as an extra coordinate; ``lr`` and ``ema_momentum`` are recorded too,
for the optimizer-to-flow unit mapping.

Cost: on a GPU a probe only copies its inputs to the host (one synchronisation) and leaves the float64
spectral work (eigendecomposition of the d x d F-hat, an SVD of the batch) to a background thread, which
overlaps with the following training steps; on the CPU the work runs inline. ``time_spent`` is the time
the training loop spends in the probes (what they cost the run), ``worker_seconds`` the background work.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from stopgrad.analysis import (
    align_loss,
    build_dataset,
    eigh_descending,
    entropy_rank,
    spectral_quantities,
    std_of_l2_normalized,
    uniformity,
)
from stopgrad.dynamics import CorrelationEMA

from .config import ProbeConfig

__all__ = ["SpectralProbe"]

_SCALARS = ("commutator", "asymmetry", "std_l2", "effective_rank", "rankme", "uniformity", "align_loss",
            "loss", "neg_dist", "knn_acc")
_MODES = ("s", "p", "alignment", "tau")
_EXTRA_MODES = ("s_cross",)
_EXTRA = ("lr", "ema_momentum")


def _cross_correlation(z: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
    """Symmetrised cross-view correlation (E[z1 za2^T] + E[z2 za1^T]) / 2, symmetrised again in (i, j).

    ``z`` and ``za`` hold view 1 then view 2 (2B, d); the result is (d, d) float32."""
    b = z.shape[0] // 2
    z1, z2 = z[:b].float(), z[b : 2 * b].float()
    a1, a2 = za[:b].float(), za[b : 2 * b].float()
    c = (z1.T @ a2 + z2.T @ a1) / (2 * b)
    return 0.5 * (c + c.T)


class SpectralProbe:
    """Collects probe records during training and turns them into a contract Dataset.

    Args:
        cfg: probe settings.
        has_rule_fhat: the method keeps its own F-hat (a predictor rule); otherwise the probe keeps one.
        steps_per_epoch: for the ``epoch`` coordinate.
    """

    def __init__(self, cfg: ProbeConfig, steps_per_epoch: int, has_rule_fhat: bool = False,
                 background: bool = False):
        self.cfg = cfg
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.fhat = None if has_rule_fhat else CorrelationEMA(cfg.rho, 1)
        self.cross = CorrelationEMA(cfg.rho, 1) if cfg.cross_view else None
        self.cross_target = CorrelationEMA(cfg.rho, 1) if cfg.cross_view else None
        self.records: dict[int, dict] = {}
        self.time_spent = 0.0
        self.worker_seconds = 0.0
        self.background = background
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self._loss_sum: torch.Tensor | None = None
        self._neg_sum: torch.Tensor | None = None
        self._count = 0

    # -- every step ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, out: dict) -> None:
        """Per-step bookkeeping on the device (no synchronisation): F-hat EMA, loss and neg_dist sums."""
        if self.cfg.every == 0:
            return
        t0 = time.perf_counter()
        if self.fhat is not None:
            self.fhat.update(out["z"].float())
        if self.cross is not None:
            self.cross.update_correlation(_cross_correlation(out["z"], out["z"]))
            if out.get("z_target") is not None:
                self.cross_target.update_correlation(_cross_correlation(out["z"], out["z_target"]))
        loss = out["loss"].detach().float()
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        if out.get("neg_dist") is not None:
            nd = out["neg_dist"].detach().float()
            self._neg_sum = nd if self._neg_sum is None else self._neg_sum + nd
        self._count += 1
        self.time_spent += time.perf_counter() - t0

    def due(self, step: int) -> bool:
        return self.cfg.every > 0 and step % self.cfg.every == 0

    # -- probe steps -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def record(self, step: int, out: dict, batch: int, fhat: torch.Tensor | None, Wp: torch.Tensor | None,
               lr: float = math.nan, ema_momentum: float = math.nan) -> None:
        """Measure at ``step`` from the step's outputs ``out`` (``z`` holds view 1 then view 2, ``batch`` rows
        each), the method's F-hat (None: the probe's own) and the linear predictor W_p (or None)."""
        t0 = time.perf_counter()
        F = fhat if fhat is not None else (self.fhat.F if self.fhat is not None else None)
        z = out["z"]
        n = min(batch, self.cfg.max_samples)
        inputs = {"z1": z[:n]}
        if z.shape[0] >= 2 * batch:
            inputs["z2"] = z[batch : batch + n]
        if F is not None:
            inputs["F"] = F
            if Wp is not None:
                inputs["Wp"] = Wp
            if self.cross is not None and self.cross.F is not None:
                inputs["F_cross"] = self.cross.F
                if self.cross_target.F is not None:
                    inputs["F_cross_target"] = self.cross_target.F
        if self._count:
            inputs["loss"] = self._loss_sum / self._count
            if self._neg_sum is not None:
                inputs["neg_dist"] = self._neg_sum / self._count
        host = {k: v.detach().to("cpu", torch.float64) for k, v in inputs.items()}  # one synchronisation
        extra = {"lr": float(lr), "ema_momentum": float(ema_momentum)}
        self._loss_sum = self._neg_sum = None
        self._count = 0
        if self.background:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stopgrad-probe")
            self._pending = [f for f in self._pending if not f.done()]
            self._pending.append(self._pool.submit(self._measure, int(step), host, extra))
        else:
            self._measure(int(step), host, extra)
        self.time_spent += time.perf_counter() - t0

    def _measure(self, step: int, host: dict, extra: dict) -> None:
        t0 = time.perf_counter()
        rec: dict = {}
        if "F" in host:
            sq = spectral_quantities(host["F"], host.get("Wp"))
            for k in ("s", "p", "alignment", "commutator", "asymmetry"):
                if k in sq:
                    rec[k] = sq[k]
            if "F_cross" in host:
                _, U = eigh_descending(host["F"])
                cross = (U * (host["F_cross"] @ U)).sum(dim=-2)
                rec["s_cross"] = cross
                if "F_cross_target" in host:
                    rec["tau"] = (U * (host["F_cross_target"] @ U)).sum(dim=-2) / cross
        z1 = host["z1"]
        rec["std_l2"] = std_of_l2_normalized(z1)
        sv = torch.linalg.svdvals(z1)
        rec["effective_rank"] = entropy_rank(sv) if bool(sv.sum() > 0) else torch.zeros((), dtype=sv.dtype)
        rec["rankme"] = entropy_rank(sv, eps=1e-7)
        rec["uniformity"] = uniformity(z1)
        if "z2" in host:
            rec["align_loss"] = align_loss(z1, host["z2"])
        for k in ("loss", "neg_dist"):
            if k in host:
                rec[k] = host[k]
        rec.update(extra)
        with self._lock:
            self.records.setdefault(step, {}).update(rec)
            self.worker_seconds += time.perf_counter() - t0

    def flush(self) -> None:
        """Wait for background measurements (before reading or saving the records)."""
        for f in self._pending:
            f.result()
        self._pending = []

    def close(self) -> None:
        self.flush()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def record_knn(self, step: int, acc: float) -> None:
        with self._lock:
            self.records.setdefault(int(step), {})["knn_acc"] = float(acc)

    # -- output ------------------------------------------------------------------------------------------------
    def to_dataset(self, method: str, config: str, attrs: dict | None = None):
        """The records as a contract Dataset (None when nothing was recorded)."""
        self.flush()
        if not self.records:
            return None
        times = sorted(self.records)
        n_mode = max((self.records[t]["s"].shape[-1] for t in times if "s" in self.records[t]), default=0)
        data: dict[str, np.ndarray] = {}
        extra = {}
        for name in _MODES + _EXTRA_MODES:
            if n_mode and any(name in self.records[t] for t in times):
                arr = np.full((len(times), n_mode), np.nan)
                for i, t in enumerate(times):
                    if name in self.records[t]:
                        arr[i] = self.records[t][name].numpy()
                if name in _MODES:
                    data[name] = arr
                else:
                    extra[name] = (("time", "mode"), arr)
        for name in _SCALARS:
            if any(name in self.records[t] for t in times):
                data[name] = np.array([float(self.records[t].get(name, math.nan)) for t in times])
        for name in _EXTRA:
            vals = np.array([float(self.records[t].get(name, math.nan)) for t in times])
            if not np.all(np.isnan(vals)):
                extra[name] = (("time",), vals)
        ds = build_dataset(data, time=np.asarray(times, dtype=float), time_units="step", source="measured",
                           method=method, config=config, extra_vars=extra, attrs=attrs or {})
        return ds.assign_coords(epoch=("time", np.asarray(times, dtype=float) / self.steps_per_epoch))

    # -- checkpointing -------------------------------------------------------------------------------------------
    def _emas(self) -> dict:
        return {"fhat": self.fhat, "cross": self.cross, "cross_target": self.cross_target}

    def state_dict(self) -> dict:
        self.flush()
        recs = {int(t): {k: (v if isinstance(v, torch.Tensor) else float(v)) for k, v in r.items()}
                for t, r in self.records.items()}
        return {
            "records": recs,
            **{name: (ema.state_dict() if ema is not None else None) for name, ema in self._emas().items()},
            "loss_sum": self._loss_sum,
            "neg_sum": self._neg_sum,
            "count": self._count,
            "time_spent": self.time_spent,
            "worker_seconds": self.worker_seconds,
        }

    def load_state_dict(self, state: dict, device=None) -> None:
        self.records = {int(t): dict(r) for t, r in state["records"].items()}
        for name, ema in self._emas().items():
            if ema is not None and state.get(name) is not None:
                st = dict(state[name])
                if st.get("F") is not None and device is not None:
                    st["F"] = st["F"].to(device)
                ema.load_state_dict(st)
        mv = (lambda v: v.to(device) if (v is not None and device is not None) else v)  # noqa: E731
        self._loss_sum, self._neg_sum = mv(state.get("loss_sum")), mv(state.get("neg_sum"))
        self._count = int(state.get("count", 0))
        self.time_spent = float(state.get("time_spent", 0.0))
        self.worker_seconds = float(state.get("worker_seconds", 0.0))
