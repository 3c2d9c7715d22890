"""A sampled simulator of Siamese SSL on structured synthetic data: SimSiam, GSG, reverse GSG, SimCLR, MoCo.

Every run of a sweep carries a leading ``run`` axis; runs that share the structural settings (method,
encoder, predictor, loss, batch, queue) are stepped together in one batched tensor program (torch,
float64); no Python loop over runs.

World (reference/methods.md §1.1 for GSG; the linear model of reference/theory.md §1):
* a finite dataset of K points x_k in R^{n1} (Gaussian clusters with labels, or a spiked covariance),
  drawn once from ``data.data_seed``; a batch draws B of them uniformly with replacement;
* augmentation: a view is x + sigma * xi, xi ~ N(0, I), independent per view (``data.aug_std`` = sigma);
* encoder: z = W x (linear) or z = W2 relu(W1 x) (``encoder = "mlp"``); predictor p = W_p z (linear) or
  none (p = z);
* four views per image for the Siamese methods: views 1, 2 of image i and views 3, 4 of image r[i], with
  ``r`` a uniform random permutation of the batch (r[i] == i is not excluded, as in the official code).

Siamese methods (the four candidate losses of the four negative pairs (11,21), (11,22), (12,21),
(12,22), each  (ell(p_1a, sg z_1a') + ell(p_2b, sg z_2b')) / 2):
* ``simsiam``: always candidate 0 (views 11 and 21 get the predictor: the fixed side);
* ``simsiam-random``: a uniformly random candidate per row (a random side);
* ``gsg``: the candidate of the closest negative pair (Euclidean, un-normalised, detached z);
* ``gsg-reverse``: the farthest negative pair.
``ell`` is the negative cosine (``loss = "cosine"``, the official code) or half the squared error
(``loss = "l2"``, the linear theory's loss, whose expected flow ``gsg_flow`` derives).

Contrastive baselines (two views per image, no predictor): ``simclr`` (NT-Xent over 2B samples with
temperature) and ``moco`` (InfoNCE of the query against its momentum-encoder key and a FIFO queue of
past keys).

SGD: W <- W - lr (grad + weight_decay W), predictor at lr * alpha_p; time is in flow units t = lr * step.

Measurements, at each save, on a fixed evaluation set (``eval_size`` images of the dataset, four fixed
views, a fixed partner permutation; identical for every run and for the expected flow):
``neg_dist`` (mean distance of the four negative pairs), ``neg_dist_min`` (mean over images of the
smallest of the four, the pair GSG selects), ``uniformity``, ``align_loss`` (views 1, 2), ``std_l2``,
``effective_rank`` (of the view-1 embeddings), ``knn_acc`` (clusters) and ``subspace`` (the fraction of the
top-n2 principal subspace of the data covariance captured by the rows of W, linear encoders).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time as _time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._checks import ConfigError, check, check_choice, check_range

__all__ = [
    "SIAMESE_METHODS",
    "SiameseData",
    "SiameseSpec",
    "SiameseSimulation",
    "EvalSet",
    "batched_metrics",
    "candidate_losses",
    "four_view_loss",
    "init_params",
    "negative_distances",
    "gsg_choice",
    "make_dataset",
    "siamese_verdicts",
    "simulate_siamese",
]

f64 = torch.float64
SIAMESE_METHODS = ("simsiam", "simsiam-random", "gsg", "gsg-reverse", "simclr", "moco")
FOUR_VIEW = ("simsiam", "simsiam-random", "gsg", "gsg-reverse")
#: the four negative pairs (view of image 1, view of image 2), in the column order of the official code
PAIRS = ((0, 2), (0, 3), (1, 2), (1, 3))
#: sibling of each view within its image
SIBLING = (1, 0, 3, 2)
UNIFORMITY_T = 2.0  # Wang & Isola's default t
KNN_K, KNN_T = 10, 0.1  # small bank (K points): k = 10 neighbours, temperature 0.1
#: collapse verdict: std_l2 below this fraction of the isotropic value 1/sqrt(n2), or the embedding scale
#: below this fraction of its initial value
COLLAPSE_STD_FRACTION = 0.1
COLLAPSE_SCALE_FRACTION = 1e-3
#: grid keys that change the tensor shapes or the program (runs are grouped by them)
STRUCTURAL = ("method", "batch", "encoder", "predictor", "loss", "queue")
#: grid keys that are per-run numbers inside one batched program
NUMERIC = ("seed", "lr", "alpha_p", "weight_decay", "aug_std", "temperature", "momentum", "w_scale")


@dataclass(frozen=True)
class SiameseData:
    """The synthetic dataset.

    kind "clusters": K points, point k in cluster k mod n_clusters, x = c + cluster_std * N(0, I), the
    centres c of norm ``cluster_sep`` in random directions. kind "spiked": x ~ N(0, I + sum_j spike_j
    v_j v_j^T) with orthonormal random v_j (``spikes`` lists the spike strengths; labels are all 0).
    ``aug_std``: the augmentation noise sigma (views x + sigma xi).
    """

    kind: str = "clusters"
    n1: int = 16
    n_points: int = 64
    n_clusters: int = 4
    cluster_sep: float = 3.0
    cluster_std: float = 0.3
    spikes: tuple[float, ...] = (8.0, 6.0, 4.0, 2.0)
    aug_std: float = 0.3
    data_seed: int = 0

    def __post_init__(self):
        check_choice("kind", self.kind, ("clusters", "spiked"))
        check_range("n1", self.n1, 1, 4096, integer=True)
        check_range("n_points", self.n_points, 2, 10**6, integer=True)
        check_range("n_clusters", self.n_clusters, 1, self.n_points, integer=True)
        check_range("cluster_sep", self.cluster_sep, 0, None)
        check_range("cluster_std", self.cluster_std, 0, None)
        check_range("aug_std", self.aug_std, 0, None)
        check_range("data_seed", self.data_seed, 0, 2**63 - 1, integer=True)
        check("spikes", list(self.spikes), self.kind != "spiked" or len(self.spikes) <= self.n1 and all(s >= 0 for s in self.spikes),
              f"needs at most n1 = {self.n1} non-negative strengths")


def make_dataset(data: SiameseData) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """The K points (K, n1) float64, their labels (K,) int64 and the population covariance (n1, n1)."""
    rng = np.random.default_rng(data.data_seed)
    K, n1 = data.n_points, data.n1
    if data.kind == "clusters":
        centres = rng.standard_normal((data.n_clusters, n1))
        centres *= data.cluster_sep / np.linalg.norm(centres, axis=1, keepdims=True)
        labels = np.arange(K) % data.n_clusters
        x = centres[labels] + data.cluster_std * rng.standard_normal((K, n1))
        cov = np.cov(centres.T, bias=True) + data.cluster_std**2 * np.eye(n1) if data.n_clusters > 1 else \
            data.cluster_std**2 * np.eye(n1)
    else:
        V, _ = np.linalg.qr(rng.standard_normal((n1, n1)))
        spikes = np.zeros(n1)
        spikes[: len(data.spikes)] = data.spikes
        cov = np.eye(n1) + (V * spikes) @ V.T
        x = rng.standard_normal((K, n1)) @ np.linalg.cholesky(cov).T
        labels = np.zeros(K, dtype=np.int64)
    return torch.as_tensor(x, dtype=f64), torch.as_tensor(labels, dtype=torch.int64), cov


@dataclass(frozen=True)
class SiameseSpec:
    """One Siamese/contrastive training setting (the defaults of every run; [grid] overrides them).

    method: one of SIAMESE_METHODS. encoder: "linear" or "mlp" (hidden width ``hidden``). predictor:
    a linear n2 x n2 predictor (four-view methods only; SimCLR and MoCo ignore it), initialised at ``wp_init`` * I + a small random
    part. loss: "cosine" or "l2". lr: SGD step (flow time per step); alpha_p: predictor lr ratio;
    weight_decay: L2 coefficient on every weight. temperature: NT-Xent / InfoNCE tau. queue, momentum:
    MoCo's queue length and EMA rate. w_scale: std of W's entries times sqrt(fan-in).
    """

    method: str = "gsg"
    encoder: str = "linear"
    n2: int = 8
    hidden: int = 32
    predictor: bool = True
    loss: str = "cosine"
    lr: float = 0.05
    alpha_p: float = 1.0
    weight_decay: float = 0.0
    batch: int = 128
    temperature: float = 0.5
    queue: int = 256
    momentum: float = 0.99
    w_scale: float = 1.0
    wp_init: float = 1.0

    def __post_init__(self):
        check_choice("method", self.method, SIAMESE_METHODS)
        check_choice("encoder", self.encoder, ("linear", "mlp"))
        check_choice("loss", self.loss, ("cosine", "l2"))
        check_range("n2", self.n2, 1, 4096, integer=True)
        check_range("hidden", self.hidden, 1, 4096, integer=True)
        check_range("lr", self.lr, 0, 10, lo_open=True)
        check_range("alpha_p", self.alpha_p, 0, None)
        check_range("weight_decay", self.weight_decay, 0, None)
        check_range("batch", self.batch, 2, 10**6, integer=True)
        check_range("temperature", self.temperature, 0, None, lo_open=True)
        check_range("queue", self.queue, 1, 10**6, integer=True)
        check_range("momentum", self.momentum, 0, 1)
        check_range("w_scale", self.w_scale, 0, None, lo_open=True)
        check_range("wp_init", self.wp_init, None, None)


@dataclass(frozen=True)
class SiameseSimulation:
    """What ``stopgrad simulate``/``sweep`` run with ``engine = "siamese"``.

    steps: SGD steps; n_save: saves (evenly spaced in steps, including 0); eval_size: images of the
    evaluation set; grid: swept keys (STRUCTURAL + NUMERIC), the runs are their Cartesian product.
    """

    engine: str = "siamese"
    steps: int = 2000
    n_save: int = 41
    eval_size: int = 256
    data: SiameseData = field(default_factory=SiameseData)
    train: SiameseSpec = field(default_factory=SiameseSpec)
    grid: Any = field(default_factory=dict)  # {key: [values]}; values may be strings (method), checked below
    seed: int = 0

    def __post_init__(self):
        check_choice("engine", self.engine, ("siamese",))
        check_range("steps", self.steps, 1, 10**8, integer=True)
        check_range("n_save", self.n_save, 2, min(self.steps + 1, 100_000), integer=True)
        check_range("eval_size", self.eval_size, 2, 10**6, integer=True)
        check_range("seed", self.seed, 0, 2**63 - 1, integer=True)
        check("grid", self.grid, isinstance(self.grid, dict), "must be a table of name = [values]")
        norm = {k: list(v) if isinstance(v, (range, tuple, np.ndarray)) else v for k, v in self.grid.items()}
        object.__setattr__(self, "grid", norm)
        allowed = STRUCTURAL + NUMERIC + ("aug_std",)
        for key, values in self.grid.items():
            check(f"grid.{key}", values, key in allowed, f"cannot be swept; sweepable: {', '.join(dict.fromkeys(allowed))}")
            check(f"grid.{key}", values, isinstance(values, list) and len(values) > 0, "must be a non-empty list")
            for v in values:
                try:
                    if key == "seed":
                        check_range("seed", v, 0, 2**63 - 1, integer=True)
                    elif key == "aug_std":
                        dataclasses.replace(self.data, aug_std=v)
                    else:
                        dataclasses.replace(self.train, **{key: v})
                except ConfigError as err:
                    raise ConfigError(f"grid.{key}", v, err.rule) from None

    def runs(self) -> list[dict]:
        """One dict of settings per run, the grid's Cartesian product in key order."""
        base = {f.name: getattr(self.train, f.name) for f in dataclasses.fields(SiameseSpec)}
        base["aug_std"] = self.data.aug_std
        base["seed"] = self.seed
        keys = list(self.grid)
        out = []
        for combo in np.ndindex(*[len(self.grid[k]) for k in keys]) if keys else [()]:
            r = dict(base)
            r.update({k: self.grid[k][i] for k, i in zip(keys, combo)})
            out.append(r)
        return out


# ----------------------------------------------------------------------------- the GSG rule

def gsg_choice(d: torch.Tensor, method: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Candidate index (...,) in 0..3 per row from the negative-pair distances d (..., 4).

    gsg: argmin (closest pair); gsg-reverse: argmax; simsiam: 0 (fixed side); simsiam-random: uniform.
    """
    if method == "gsg":
        return d.argmin(dim=-1)
    if method == "gsg-reverse":
        return d.argmax(dim=-1)
    if method == "simsiam":
        return torch.zeros(d.shape[:-1], dtype=torch.int64, device=d.device)
    if method == "simsiam-random":
        return torch.randint(0, 4, d.shape[:-1], generator=generator, device=d.device)
    raise ConfigError("method", method, f"has no GSG choice; allowed: {', '.join(FOUR_VIEW)}")


def negative_distances(z: torch.Tensor) -> torch.Tensor:
    """(..., N, 4) Euclidean distances of the negative pairs (11,21), (11,22), (12,21), (12,22) from the
    views z (..., 4, N, n2) ordered [11, 12, 21, 22] (views of image 2 already permuted)."""
    return torch.stack([(z[..., a, :, :] - z[..., b, :, :]).norm(dim=-1) for a, b in PAIRS], dim=-1)


def candidate_losses(p: torch.Tensor, z: torch.Tensor, loss: str) -> torch.Tensor:
    """(..., N, 4) the four candidate losses; p, z (..., 4, N, n2) predictions and (detached) targets.

    Candidate (a, b) = (ell(p_a, z_sib(a)) + ell(p_b, z_sib(b))) / 2, with ell = -cos or ||.||^2 / 2."""
    def ell(i):
        src, tgt = p[..., i, :, :], z[..., SIBLING[i], :, :]
        if loss == "cosine":
            return -torch.nn.functional.cosine_similarity(src, tgt, dim=-1, eps=1e-12)
        return 0.5 * (src - tgt).pow(2).sum(-1)

    terms = [ell(i) for i in range(4)]
    return torch.stack([0.5 * (terms[a] + terms[b]) for a, b in PAIRS], dim=-1)


# ----------------------------------------------------------------------------- networks

def _encode(params: dict, x: torch.Tensor, encoder: str) -> torch.Tensor:
    """z = W x or W2 relu(W1 x) for x (R, ..., n1) -> (R, ..., n2), weights (R, out, in)."""
    shape = x.shape
    flat = x.reshape(shape[0], -1, shape[-1])
    if encoder == "linear":
        z = flat @ params["W"].mT
    else:
        z = torch.relu(flat @ params["W1"].mT) @ params["W2"].mT
    return z.reshape(*shape[:-1], z.shape[-1])


def _predict(params: dict, z: torch.Tensor) -> torch.Tensor:
    if "Wp" not in params:
        return z
    shape = z.shape
    return (z.reshape(shape[0], -1, shape[-1]) @ params["Wp"].mT).reshape(shape)


def init_params(spec: dict, n1: int, seeds: np.ndarray, w_scale: torch.Tensor) -> dict:
    """Per-run initial weights, each run from its own seed (W ~ N(0, w_scale^2 / fan_in)); W_p = wp_init I
    plus N(0, 0.01^2 / n2) entries. Returns {name: (R, out, in) float64}."""
    n2, h = spec["n2"], spec["hidden"]
    shapes = {"W": (n2, n1)} if spec["encoder"] == "linear" else {"W1": (h, n1), "W2": (n2, h)}
    use_p = spec["predictor"] and spec["method"] in FOUR_VIEW
    out = {k: [] for k in list(shapes) + (["Wp"] if use_p else [])}
    for s in seeds:  # one generator per run: a run's initial weights do not depend on its batch-mates
        g = torch.Generator().manual_seed(int(s))
        for k, (o, i) in shapes.items():
            out[k].append(torch.randn(o, i, generator=g, dtype=f64) / math.sqrt(i))
        if use_p:
            out["Wp"].append(spec["wp_init"] * torch.eye(n2, dtype=f64) + 0.01 * torch.randn(n2, n2, generator=g, dtype=f64) / math.sqrt(n2))
    res = {k: torch.stack(v) for k, v in out.items()}
    for k in shapes:
        res[k] = res[k] * w_scale.view(-1, 1, 1)
    return res


# ----------------------------------------------------------------------------- measurements

@dataclass
class EvalSet:
    """The fixed evaluation set: views (4, E, n1) [11, 12, 21, 22] (21/22 already permuted), labels of
    image 1 (E,), the clean dataset points (K, n1) with labels (the kNN bank), the top-n2 principal basis
    of the population covariance (n1, n2) and the number of classes."""

    views: torch.Tensor
    labels: torch.Tensor
    bank: torch.Tensor
    bank_labels: torch.Tensor
    pcs: torch.Tensor
    n_classes: int

    @classmethod
    def build(cls, data: SiameseData, n2: int, size: int, seed: int) -> EvalSet:
        """Draw an evaluation set of ``size`` points (views and a kNN bank) from ``data``, seeded."""
        x, y, cov = make_dataset(data)
        g = torch.Generator().manual_seed(int(seed) + 1_000_003)
        idx = torch.randint(0, x.shape[0], (size,), generator=g)
        views = x[idx].unsqueeze(0) + data.aug_std * torch.randn(4, size, x.shape[1], generator=g, dtype=f64)
        r = torch.randperm(size, generator=g)
        views[2:] = views[2:, r]
        lam, V = np.linalg.eigh(cov)
        pcs = torch.as_tensor(V[:, ::-1][:, : min(n2, data.n1)].copy(), dtype=f64)
        return cls(views, y[idx], x, y, pcs, int(y.max()) + 1)


def _entropy_rank(vals: torch.Tensor) -> torch.Tensor:
    p = vals / vals.sum(-1, keepdim=True).clamp(min=torch.finfo(vals.dtype).tiny)
    return torch.exp(-(torch.where(p > 0, p * p.clamp(min=1e-300).log(), torch.zeros_like(p))).sum(-1))


@torch.no_grad()
def batched_metrics(z: torch.Tensor, ev: EvalSet, bank_z: torch.Tensor | None = None,
                    W: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The measurements of R runs at once from eval embeddings z (R, 4, E, n2) ([11, 12, 21, 22]).

    Each equals the stopgrad.analysis metric of one run (tests/dynamics/test_siamese.py checks that):
    std_l2 = std_of_l2_normalized(z11), effective_rank = effective_rank(z11) ("singular"),
    uniformity = uniformity(z11, t=2), align_loss = align_loss(z11, z12). bank_z (R, K, n2): the kNN
    bank (clean dataset embeddings) -> knn_acc; W (R, n2, n1) -> subspace = ||P_rows(W) U||_F^2 / k.
    Returns {name: (R,)} float64.
    """
    d = negative_distances(z)
    z1 = z[:, 0]
    n1v = torch.nn.functional.normalize(z1, dim=-1)
    n2v = torch.nn.functional.normalize(z[:, 1], dim=-1)
    E = z1.shape[1]
    sq = torch.cdist(n1v, n1v).pow(2)
    iu = torch.triu_indices(E, E, offset=1)
    pair = sq[:, iu[0], iu[1]]
    out = {
        "neg_dist": d.mean(dim=(-1, -2)),
        "neg_dist_min": d.min(dim=-1).values.mean(-1),
        "std_l2": n1v.std(dim=1, unbiased=True).mean(-1),
        "effective_rank": _entropy_rank(torch.linalg.svdvals(z1)),
        "uniformity": torch.logsumexp(-UNIFORMITY_T * pair, dim=-1) - math.log(pair.shape[-1]),
        "align_loss": (n1v - n2v).pow(2).sum(-1).mean(-1),
        "embed_scale": z1.pow(2).sum(-1).mean(-1).sqrt(),
    }
    if bank_z is not None and ev.n_classes > 1:
        b = torch.nn.functional.normalize(bank_z, dim=-1)
        k = min(KNN_K, b.shape[1])
        sim, idx = (n1v @ b.mT).topk(k, dim=-1)
        votes = torch.zeros(*sim.shape[:2], ev.n_classes, dtype=f64)
        votes.scatter_add_(-1, ev.bank_labels[idx], (sim / KNN_T).exp())
        out["knn_acc"] = (votes.argmax(-1) == ev.labels).double().mean(-1)
    if W is not None:
        Q = torch.linalg.qr(W.mT).Q  # (R, n1, n2) orthonormal basis of W's row space
        U = ev.pcs
        out["subspace"] = (Q.mT @ U).pow(2).sum(dim=(-1, -2)) / U.shape[1]
    return out


def siamese_verdicts(std_l2: np.ndarray, scale: np.ndarray, n2: int) -> np.ndarray:
    """Per-run verdict from std_l2 (R, S) and the embedding scale (R, S): "collapsed" when at the last
    save std_l2 < COLLAPSE_STD_FRACTION / sqrt(n2) (one direction) or the scale fell below
    COLLAPSE_SCALE_FRACTION of its initial value (norm collapse); "non-finite" on NaN; else
    "non-collapsed"."""
    s_end, sc_end = std_l2[:, -1], scale[:, -1]
    bad = ~np.isfinite(s_end) | ~np.isfinite(sc_end)
    coll = (s_end < COLLAPSE_STD_FRACTION / math.sqrt(n2)) | (sc_end < COLLAPSE_SCALE_FRACTION * scale[:, 0])
    return np.where(bad, "non-finite", np.where(coll, "collapsed", "non-collapsed"))


# ----------------------------------------------------------------------------- one batched program

def four_view_loss(params: dict, x: torch.Tensor, sigma: torch.Tensor, spec: dict, g: torch.Generator) -> torch.Tensor:
    """Per-run loss (R,) of the four-view methods for the batch x (R, B, n1): draws the four views
    (noise sigma (R,)), the partner permutation, applies ``gsg_choice`` for ``spec['method']`` and averages
    the chosen candidate losses (``spec['loss']``) over rows. params: {'W'} or {'W1', 'W2'} (+ 'Wp')."""
    R, B, n1 = x.shape
    views = x.unsqueeze(1) + sigma.view(R, 1, 1, 1) * torch.randn(R, 4, B, n1, generator=g, dtype=f64)
    r = torch.argsort(torch.rand(R, B, generator=g, dtype=f64), dim=-1)  # a permutation per run
    idx = r.view(R, 1, B, 1).expand(R, 2, B, n1)
    views = torch.cat([views[:, :2], views[:, 2:].gather(2, idx)], dim=1)
    z = _encode(params, views, spec["encoder"])
    p = _predict(params, z)
    zt = z.detach()
    choice = gsg_choice(negative_distances(zt), spec["method"], g)
    cand = candidate_losses(p, zt, spec["loss"])
    return cand.gather(-1, choice.unsqueeze(-1)).squeeze(-1).mean(-1)


def _nt_xent(q: torch.Tensor, k: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """NT-Xent over 2B samples per run: q, k (R, B, n2) the two views' embeddings; tau (R,)."""
    R, B, _ = q.shape
    h = torch.nn.functional.normalize(torch.cat([q, k], dim=1), dim=-1)
    logits = h @ h.mT / tau.view(R, 1, 1)
    eye = torch.eye(2 * B, dtype=torch.bool)
    logits = logits.masked_fill(eye, -math.inf)
    target = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)])
    return -(logits[:, torch.arange(2 * B), target] - torch.logsumexp(logits, dim=-1)).mean(-1)


def _contrastive_loss(params, x, sigma, spec, g, tau, state):
    R, B, n1 = x.shape
    views = x.unsqueeze(1) + sigma.view(R, 1, 1, 1) * torch.randn(R, 2, B, n1, generator=g, dtype=f64)
    q = _encode(params, views[:, 0], spec["encoder"])
    if spec["method"] == "simclr":
        return _nt_xent(q, _encode(params, views[:, 1], spec["encoder"]), tau)
    with torch.no_grad():
        k = torch.nn.functional.normalize(_encode(state["key_params"], views[:, 1], spec["encoder"]), dim=-1)
    qn = torch.nn.functional.normalize(q, dim=-1)
    pos = (qn * k).sum(-1, keepdim=True)
    neg = qn @ state["queue"].mT
    logits = torch.cat([pos, neg], dim=-1) / tau.view(R, 1, 1)
    state["new_keys"] = k
    return -(logits[..., 0] - torch.logsumexp(logits, dim=-1)).mean(-1)


def _run_group(spec: dict, rows: list[dict], sim: SiameseSimulation, ev: EvalSet, x_data: torch.Tensor,
               group_seed: int) -> dict[str, np.ndarray]:
    """Step the runs ``rows`` (same structural settings ``spec``) together; returns (R, S) arrays."""
    R = len(rows)
    col = lambda key: torch.tensor([float(r[key]) for r in rows], dtype=f64)  # noqa: E731
    lr, alpha_p, wd, sigma = col("lr"), col("alpha_p"), col("weight_decay"), col("aug_std")
    tau, mom = col("temperature"), col("momentum")
    seeds = np.array([int(r["seed"]) for r in rows])
    params = init_params(spec, x_data.shape[1], seeds, col("w_scale"))
    g = torch.Generator().manual_seed(group_seed)
    K, B = x_data.shape[0], int(spec["batch"])
    state = {}
    if spec["method"] == "moco":
        state["key_params"] = {k: v.clone() for k, v in params.items()}
        state["queue"] = torch.nn.functional.normalize(torch.randn(R, int(spec["queue"]), spec["n2"], generator=g, dtype=f64), dim=-1)
    save_steps = np.unique(np.linspace(0, sim.steps, sim.n_save).round().astype(int))
    rec: dict[str, list] = {}

    def measure():
        with torch.no_grad():
            z = _encode(params, ev.views.unsqueeze(0).expand(R, -1, -1, -1), spec["encoder"])
            bank = _encode(params, ev.bank.unsqueeze(0).expand(R, -1, -1), spec["encoder"])
            m = batched_metrics(z, ev, bank, params.get("W"))
        for k, v in m.items():
            rec.setdefault(k, []).append(v.numpy().copy())

    scale = {k: (lr * alpha_p if k == "Wp" else lr).view(R, 1, 1) for k in params}
    step, si = 0, 0
    if save_steps[0] == 0:
        measure()
        si = 1
    while step < sim.steps:
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        x = x_data[torch.randint(0, K, (R, B), generator=g)]
        if spec["method"] in FOUR_VIEW:
            loss = four_view_loss(leaves, x, sigma, spec, g)
        else:
            loss = _contrastive_loss(leaves, x, sigma, spec, g, tau, state)
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        with torch.no_grad():
            params = {k: v - scale[k] * (gr + wd.view(R, 1, 1) * v)
                      for (k, v), gr in zip(leaves.items(), grads)}
            if spec["method"] == "moco":
                m = mom.view(R, 1, 1)
                state["key_params"] = {k: m * state["key_params"][k] + (1 - m) * params[k] for k in params}
                state["queue"] = torch.cat([state.pop("new_keys"), state["queue"]], dim=1)[:, : int(spec["queue"])]
        step += 1
        if si < len(save_steps) and step == save_steps[si]:
            measure()
            si += 1
    out = {k: np.stack(v, axis=1) for k, v in rec.items()}
    out["_steps"] = save_steps
    out["_params"] = {k: v.numpy() for k, v in params.items()}
    return out


def simulate_siamese(sim: SiameseSimulation, progress: bool = False, return_params: bool = False):
    """Run every run of ``sim`` and return a contract Dataset (source "sampled", time in flow units
    t = lr * step for the run's lr; the ``step`` coordinate gives the SGD steps).

    Runs are grouped by their structural settings (STRUCTURAL keys); within a group all runs are stepped
    in one batched program. The group's sample stream comes from a generator seeded with the config's
    ``seed`` and the group's run seeds, so a run's result depends on its group (documented; the initial
    weights come from the run's own seed only). With ``return_params`` also returns the final weights
    {name: (R, out, in) ndarray} (NaN for runs whose group has no such weight).
    """
    from tqdm.auto import tqdm

    from stopgrad.analysis import build_dataset

    start = _time.perf_counter()
    rows = sim.runs()
    x_data, _, _ = make_dataset(sim.data)
    ev = EvalSet.build(sim.data, sim.train.n2 if "n2" not in sim.grid else max(sim.grid["n2"]), sim.eval_size, sim.data.data_seed)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(r[k] for k in STRUCTURAL), []).append(i)
    R = len(rows)
    results: dict[str, np.ndarray] = {}
    final: dict[str, np.ndarray] = {}
    steps = None
    for gi, (key, idx) in enumerate(tqdm(groups.items(), desc="siamese groups", disable=not progress, leave=False)):
        spec = dict(rows[idx[0]])
        seq = np.random.SeedSequence([sim.seed, gi] + [int(rows[i]["seed"]) for i in idx])
        out = _run_group(spec, [rows[i] for i in idx], sim, ev, x_data, int(seq.generate_state(1, np.uint64)[0] >> 1))
        steps = out.pop("_steps")
        for k, v in out.pop("_params").items():
            if k not in final:
                final[k] = np.full((R,) + v.shape[1:], np.nan)
            if final[k].shape[1:] == v.shape[1:]:
                final[k][idx] = v
        for k, v in out.items():
            if k not in results:
                results[k] = np.full((R, v.shape[1]), np.nan)
            results[k][idx] = v
    verdict = siamese_verdicts(results["std_l2"], results["embed_scale"], sim.train.n2)
    contract = ("neg_dist", "std_l2", "effective_rank", "uniformity", "align_loss", "knn_acc")
    data = {k: results[k] for k in contract if k in results}
    extra = {k: (("run", "time"), results[k]) for k in results if k not in contract}
    extra["verdict"] = (("run",), verdict)
    lr_run = np.array([float(r["lr"]) for r in rows])
    extra["flow_time"] = (("run", "time"), lr_run[:, None] * steps[None, :])
    run_coords = {}
    for k in sim.grid:
        vals = [r[k] for r in rows]
        run_coords[k] = np.array([int(v) if isinstance(v, bool) else v for v in vals])
    if not run_coords:
        run_coords["seed"] = np.array([sim.seed])
    cfg = json.dumps(dataclasses.asdict(sim), default=str)
    method = rows[0]["method"] if len({r["method"] for r in rows}) == 1 else "mixed"
    ds = build_dataset(data, time=steps.astype(float), time_units="step", source="sampled", method=method,
                       config=cfg, run_coords=run_coords, extra_vars=extra,
                       attrs={"engine": "siamese", "backend": "torch", "wall_seconds": _time.perf_counter() - start,
                              "n2": sim.train.n2, "aug_std": sim.data.aug_std})
    return (ds, final) if return_params else ds
