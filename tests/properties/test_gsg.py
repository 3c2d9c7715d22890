"""Properties of GSG, guided stop-gradient (Lee & Lee 2023): the distances of the negative pairs, the
candidate losses, and the selection of the closest pair.

Labels: image 1 has views (11, 12), image 2 (its random partner) has views (21, 22). The distance
columns are the pairs (11,21), (11,22), (12,21), (12,22); candidate c = (a, b) gives the predictor to
views 1a and 2b. Relabelling the images or views only permutes these four columns, so the selected
loss cannot change.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stopgrad.ssl_models import GSG, gsg_distances, gsg_loss
from stopgrad.ssl_models import MethodConfig, TrainConfig, EncoderConfig, ProjectorConfig, PredictorConfig
from stopgrad.testing import strategies as sgst

EPS = float(np.finfo(np.float64).eps)
SAFETY = 8.0
HEAVY = settings(max_examples=max(3, settings.default.max_examples // 5))

#: column permutations of the (N, 4) distances / candidates under each relabelling
SWAP_IMAGES = [0, 2, 1, 3]  # (a, b) -> (b, a)
SWAP_VIEWS_OF_IMAGE_1 = [2, 3, 0, 1]  # 11 <-> 12
SWAP_VIEWS_OF_IMAGE_2 = [1, 0, 3, 2]  # 21 <-> 22


@st.composite
def batches(draw, k=4, max_n=10, max_d=6):
    """k (N, d) float64 batches of one shape: views 11, 12, 21, 22 (then predictions, if k = 8)."""
    z = draw(sgst.embeddings(max_n=max_n, max_d=max_d))
    n, d = z.shape
    rest = [draw(sgst.embeddings(n, d)) for _ in range(k - 1)]
    return [torch.as_tensor(a) for a in [z, *rest]]


def cos_tol(d: int) -> float:
    return SAFETY * (d + 4) * EPS


@given(batches())
def test_relabelling_images_or_views_permutes_the_distance_columns(z):
    """Euclidean distance is symmetric, so each relabelling maps the four negative pairs onto each other:
    swapping the images gives columns [0, 2, 1, 3], swapping image 1's views [2, 3, 0, 1], image 2's
    [1, 0, 3, 2]. The squares (a - b)^2 = (b - a)^2 are exact in floating point, so equality is exact."""
    z11, z12, z21, z22 = z
    d = gsg_distances(z11, z12, z21, z22)
    assert torch.equal(gsg_distances(z21, z22, z11, z12), d[:, SWAP_IMAGES])
    assert torch.equal(gsg_distances(z12, z11, z21, z22), d[:, SWAP_VIEWS_OF_IMAGE_1])
    assert torch.equal(gsg_distances(z11, z12, z22, z21), d[:, SWAP_VIEWS_OF_IMAGE_2])
    assert bool((d >= 0).all())


@given(batches(8))
def test_the_selected_loss_is_invariant_to_swapping_images_and_relabelling_views(zp):
    """With the choice taken as the argmin of the distances, relabelling images or views (the same
    relabelling of predictions p and targets z) selects the same pairs, so the loss is unchanged. Ties
    between columns could pick a different but equally close pair; continuous random inputs have none,
    and we skip the rare exact tie."""
    z11, z12, z21, z22, p11, p12, p21, p22 = zp
    d = gsg_distances(z11, z12, z21, z22)
    srt = d.sort(dim=1).values
    if bool((srt[:, 1] == srt[:, 0]).any()):
        return  # an exact tie: argmin's pick is a matter of convention
    base = float(gsg_loss(p11, p12, p21, p22, z11, z12, z21, z22, d.argmin(1)))
    tol = 2 * cos_tol(z11.shape[1])
    for args in ((p21, p22, p11, p12, z21, z22, z11, z12), (p12, p11, p21, p22, z12, z11, z21, z22),
                 (p11, p12, p22, p21, z11, z12, z22, z21)):
        dd = gsg_distances(*args[4:])
        assert abs(float(gsg_loss(*args, dd.argmin(1))) - base) <= tol


@given(batches(8))
def test_each_candidate_loss_is_a_mean_of_two_negative_cosines(zp):
    """Candidate (a, b) is -(cos(p1a, z1a') + cos(p2b, z2b')) / 2 per sample, so it lies in [-1, 1], and
    gsg_loss with a constant choice c is the mean of that candidate over the batch (checked against an
    independent float64 computation)."""
    z11, z12, z21, z22, p11, p12, p21, p22 = zp
    n, d = z11.shape

    def cos(a, b):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))

    cand = [-(cos(p11, z12) + cos(p21, z22)) / 2, -(cos(p11, z12) + cos(p22, z21)) / 2,
            -(cos(p12, z11) + cos(p21, z22)) / 2, -(cos(p12, z11) + cos(p22, z21)) / 2]
    for c in range(4):
        got = float(gsg_loss(p11, p12, p21, p22, z11, z12, z21, z22, torch.full((n,), c)))
        assert abs(got - float(cand[c].mean())) <= 2 * cos_tol(d)
        assert -1 - cos_tol(d) <= got <= 1 + cos_tol(d)


def _tiny_gsg(out_dim: int, byol: bool) -> GSG:
    cfg = TrainConfig(method=MethodConfig(name="byol-gsg" if byol else "simsiam-gsg"),
                      encoder=EncoderConfig(arch="convnet", width=2),
                      projector=ProjectorConfig(layers=1, hidden_dim=4, out_dim=out_dim, last_bn=False),
                      predictor=PredictorConfig(kind="linear"))
    return GSG(cfg).double().eval()


@HEAVY
@given(st.integers(2, 8), st.integers(1, 6), st.booleans(), sgst.seeds())
def test_the_method_selects_the_closest_negative_pair(n, out_dim, byol, seed):
    """GSG's forward pass picks, for each image, the candidate whose negative pair is the closest (the
    argmin of the four distances between the target projections of image i's views and its partner's),
    and reports the mean of those distances; recomputed here from the networks outside forward()."""
    torch.manual_seed(seed % 2**31)
    method = _tiny_gsg(out_dim, byol)
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(4)]
    method.generator = torch.Generator().manual_seed(seed + 1)
    out = method(views)
    r = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    xs = [views[0], views[1], views[2][r], views[3][r]]
    with torch.no_grad():
        targets = [method.target(x) for x in xs] if byol else [method.online(x)[0] for x in xs]
    dist = gsg_distances(*targets)
    srt = dist.sort(dim=1).values
    decided = srt[:, 1] - srt[:, 0] > SAFETY * EPS * srt[:, 1].clamp(min=1.0) * 64
    assert torch.equal(method.last_choice[decided], dist.argmin(1)[decided])
    assert abs(float(out["neg_dist"]) - float(dist.mean())) <= 64 * EPS * max(1.0, float(dist.max()))
