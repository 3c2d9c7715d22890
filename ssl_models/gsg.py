"""GSG, guided stop-gradient (Lee & Lee 2023), for SimSiam and BYOL, as the official code does it
(reference/methods.md §1.1).

Per step: four augmentations of each image; ``r = randperm(N)`` pairs image i with image r[i], seen
through views 3 and 4 (x21 = view3[r], x22 = view4[r]; r[i] == i is not excluded). The Euclidean
distances between the un-normalised projections of the four cross-image ("negative") pairs,
d(z11, z21), d(z11, z22), d(z12, z21), d(z12, z22), are computed on detached tensors (momentum-encoder
projections for BYOL-GSG); for the closest pair (x1a, x2b) those two views get the predictor and their
siblings x1a', x2b' are the stop-gradient targets:

    l1121 = -(cos(p11, z12) + cos(p21, z22)) / 2      l1122 = -(cos(p11, z12) + cos(p22, z21)) / 2
    l1221 = -(cos(p12, z11) + cos(p21, z22)) / 2      l1222 = -(cos(p12, z11) + cos(p22, z21)) / 2

and the loss is the mean over samples of the selected candidate (in [-1, 1], not symmetrised).

``mean_negative_distance`` is the same statistic for any two-view method (the probes log it as ``neg_dist``
for every method): image i is paired with image ``partner[i]`` and the four cross pairs of their two views'
un-normalised projections are averaged, exactly as GSG's ``neg_dist``. The default partner is the fixed
derangement i -> (i + B/2) mod B (``half_shift_partner``): no random draw, so a run's random streams, and
its bitwise resumability, are untouched. For a two-view method the partner's views 1 and 2 stand in for
GSG's views 3 and 4: both are independent augmentations of the partner image, so the statistic has the same
distribution given the weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stopgrad.dynamics import gsg_choice

from .base import SSLMethod, build_online
from .byol import MomentumMixin
from .config import TrainConfig
from .precision import at_least_fp32

__all__ = ["GSG", "gsg_distances", "gsg_loss", "half_shift_partner", "mean_negative_distance"]


@torch.no_grad()
def gsg_distances(z11: torch.Tensor, z12: torch.Tensor, z21: torch.Tensor, z22: torch.Tensor) -> torch.Tensor:
    """(N, 4) Euclidean distances of the negative pairs, columns (11,21), (11,22), (12,21), (12,22), fp32."""
    def dist(a, b):
        return (at_least_fp32(a) - at_least_fp32(b)).pow(2).sum(dim=1).sqrt()

    return torch.stack([dist(z11, z21), dist(z11, z22), dist(z12, z21), dist(z12, z22)], dim=1)


def half_shift_partner(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The fixed partner permutation i -> (i + n // 2) mod n, (n,) int64; a derangement for n >= 2."""
    return (torch.arange(n, device=device) + n // 2) % n


@torch.no_grad()
def mean_negative_distance(z1: torch.Tensor, z2: torch.Tensor, partner: torch.Tensor | None = None) -> torch.Tensor:
    """GSG's ``neg_dist`` for a two-view batch: the mean Euclidean distance of the four negative pairs.

    Args:
        z1, z2: (B, d) un-normalised projections of views 1 and 2 of the same B images.
        partner: (B,) int64, image i is paired with image ``partner[i]``; default ``half_shift_partner(B)``.

    Returns:
        0-d fp32 tensor: mean over i of the distances (z1_i, z1_p), (z1_i, z2_p), (z2_i, z1_p), (z2_i, z2_p)
        with p = partner[i], in the projection's units.
    """
    if partner is None:
        partner = half_shift_partner(z1.shape[0], z1.device)
    return gsg_distances(z1, z2, z1[partner], z2[partner]).mean()


def gsg_loss(p11, p12, p21, p22, z11, z12, z21, z22, choice: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the candidate loss picked by ``choice`` (N,) in 0..3 (column of gsg_distances).

    The z are the targets (detach them for the stop-gradient); cosine in fp32."""
    with torch.autocast(device_type=p11.device.type, enabled=False):
        def cos(a, b):
            return F.cosine_similarity(at_least_fp32(a), at_least_fp32(b), dim=1, eps=1e-8)

        c11_12, c12_11 = cos(p11, z12), cos(p12, z11)
        c21_22, c22_21 = cos(p21, z22), cos(p22, z21)
        cand = torch.stack(
            [
                -0.5 * (c11_12 + c21_22),
                -0.5 * (c11_12 + c22_21),
                -0.5 * (c12_11 + c21_22),
                -0.5 * (c12_11 + c22_21),
            ],
            dim=1,
        )
        return cand.gather(1, choice.view(-1, 1)).mean()


class GSG(MomentumMixin, SSLMethod):
    """GSG on SimSiam (``method.name = 'simsiam-gsg'``) or BYOL (``'byol-gsg'``: targets and distances
    from the momentum encoder, m fixed at 0.99 in the official code). ``method.reverse = true``: reverse
    GSG, the farthest negative pair gets the predictor (not in the official code; an ablation)."""

    n_views = 4

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.online = build_online(cfg)
        self.byol = cfg.method.name == "byol-gsg"
        # the sampled simulator's selection rule (stopgrad.dynamics.gsg_choice): the closest negative pair,
        # or the farthest for reverse GSG; distances are the columns of gsg_distances
        self.selection = "gsg-reverse" if cfg.method.reverse else "gsg"
        if self.byol:
            self._init_target()
        self.last_choice: torch.Tensor | None = None
        self.last_partner: torch.Tensor | None = None

    def networks(self):
        return [self.online] + ([self.target] if self.byol else [])

    def partner(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(n, generator=self._rand_generator(device), device=device)

    def forward(self, views: list[torch.Tensor]) -> dict:
        x11, x12, v21, v22 = views
        r = self.partner(x11.shape[0], x11.device)
        self.last_partner = r
        x21, x22 = v21[r], v22[r]
        z11, p11 = self.online(x11)
        z12, p12 = self.online(x12)
        z21, p21 = self.online(x21)
        z22, p22 = self.online(x22)
        if self.byol:
            with torch.no_grad():
                t11, t12, t21, t22 = (self.target(x) for x in (x11, x12, x21, x22))
        else:
            t11, t12, t21, t22 = (self._stop(z) for z in (z11, z12, z21, z22))
        d = gsg_distances(t11.detach(), t12.detach(), t21.detach(), t22.detach())
        choice = gsg_choice(d, self.selection)
        self.last_choice = choice
        loss = gsg_loss(p11, p12, p21, p22, t11, t12, t21, t22, choice)
        self.observe(z11, z12)
        return {"loss": loss, "z": torch.cat([z11, z12]).detach(), "neg_dist": d.mean()}

    def on_step_end(self, step: int) -> None:
        if self.byol:
            self.update_target(step)
        self.apply_rule(step)
