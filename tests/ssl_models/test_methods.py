"""Methods on real CIFAR-10 images: losses go down, GSG selects like a brute-force loop, stop-gradient
blocks gradients (checked through autograd), the EMA update is exact, predictor rules overwrite W_p."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stopgrad.dynamics import RuleSpec, directpred, gsg_choice
from stopgrad.ssl_models import (
    GSG,
    BYOL,
    MethodConfig,
    OptimConfig,
    PredictorConfig,
    ProjectorConfig,
    SimSiam,
    Trainer,
    cosine_momentum,
    gsg_distances,
    gsg_loss,
    half_shift_partner,
    mean_negative_distance,
    update_momentum,
)

LOSS_CASES = {
    "simsiam": {},
    "byol": {},
    "simsiam-gsg": {},
    "byol-gsg": {},
    "simclr": {},
    "mocov2": {},
    "directpred": dict(method=MethodConfig(name="byol"),
                       projector=ProjectorConfig(hidden_dim=128, out_dim=32, last_bn=False, last_bias=True),
                       predictor=PredictorConfig(kind="linear", rule=RuleSpec("directpred", eps=0.1), rho=0.3)),
    "directcopy": dict(method=MethodConfig(name="simsiam"),
                       predictor=PredictorConfig(kind="linear", rule=RuleSpec("directcopy", eps=0.25))),
}


def _trainer(make_config, data, name="simsiam", **over) -> Trainer:
    cfg = make_config(name, **over)
    return Trainer(cfg, None, device="cpu", data=data).setup()


def _losses(tr: Trainer, steps: int) -> list[float]:
    out, spe = [], tr.steps_per_epoch
    while len(out) < steps:
        order = tr.epoch_order(tr.step // spe)
        pos = tr.step % spe
        idx = order[pos * tr.cfg.train.batch_size : (pos + 1) * tr.cfg.train.batch_size]
        out.append(float(tr.train_step(idx)["loss"].detach()))
    return out


@pytest.mark.parametrize("name", [n for n in LOSS_CASES if n != "mocov2"])
def test_loss_goes_down(name, make_config, cifar_small):
    over = dict(LOSS_CASES[name])
    base = over["method"].name if "method" in over else name
    over.setdefault("optim", OptimConfig(lr=0.2, weight_decay=0.0))
    tr = _trainer(make_config, cifar_small, base, **over)
    losses = _losses(tr, 24)
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.02, f"{name}: loss {first:.4f} -> {last:.4f}"


def test_mocov2_instance_discrimination_loss_goes_down(make_config, cifar_small):
    """MoCo's training loss is not comparable across steps (the queue's negatives change from random
    vectors to ever harder real keys), so its InfoNCE is measured on fixed views of a fixed batch, the
    other images' keys as negatives, before and after training."""
    import copy

    cfg = make_config("mocov2", optim=OptimConfig(lr=0.06, weight_decay=0.0),
                      method=MethodConfig(name="mocov2", queue_size=128, temperature=0.1,
                                          momentum_schedule="constant", momentum=0.99))
    tr = Trainer(cfg, None, device="cpu", data=cifar_small).setup()
    g = torch.Generator().manual_seed(123)
    x = tr.train_images[:128]
    v1, v2 = tr.augment(x, g), tr.augment(x, g)

    def fixed_loss():
        m = copy.deepcopy(tr.method)  # BN statistics of the copy, not of the trained model, move
        with torch.no_grad():
            q = F.normalize(m.online(v1)[0], dim=1)
            k = F.normalize(m.target(v2), dim=1)
        return float(F.cross_entropy(q @ k.T / 0.1, torch.arange(128)))

    before = fixed_loss()
    losses = _losses(tr, 32)
    after = fixed_loss()
    assert all(math.isfinite(v) for v in losses)
    assert after < before - 0.2, (before, after)


# ----------------------------------------------------------------------------------------------- GSG
def _brute_force_gsg(p, z, reverse=False):
    """Loop over samples and the four negative pairs, in plain Python floats (``reverse``: the farthest
    pair gets the predictor)."""
    n = z[0].shape[0]
    pairs = [(0, 2), (0, 3), (1, 2), (1, 3)]  # (z11,z21), (z11,z22), (z12,z21), (z12,z22)
    choices, losses = [], []

    def cos(a, b):
        a, b = a.tolist(), b.tolist()
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    for i in range(n):
        dists = []
        for a, b in pairs:
            dists.append(math.sqrt(sum((x - y) ** 2 for x, y in zip(z[a][i].tolist(), z[b][i].tolist()))))
        c = max(range(4), key=lambda k: (dists[k], -k)) if reverse else min(range(4), key=lambda k: (dists[k], k))
        a, b = pairs[c]
        sib = {0: 1, 1: 0, 2: 3, 3: 2}
        # the closest pair's views are the sources (get the predictor), their siblings the targets
        losses.append(-0.5 * (cos(p[a][i], z[sib[a]][i]) + cos(p[b][i], z[sib[b]][i])))
        choices.append(c)
    return choices, sum(losses) / n


def test_gsg_selection_and_loss_match_brute_force():
    g = torch.Generator().manual_seed(0)
    n, d = 40, 6
    z = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(4)]
    p = [torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(4)]
    choices, loss = _brute_force_gsg(p, z)
    dist = gsg_distances(*z)
    assert dist.argmin(1).tolist() == choices
    assert len(set(choices)) == 4  # every candidate occurs
    got = gsg_loss(*p, *z, dist.argmin(1))
    assert math.isclose(float(got), loss, rel_tol=1e-6, abs_tol=1e-7)


def test_reverse_gsg_choice_is_the_argmax_where_gsgs_is_the_argmin():
    g = torch.Generator().manual_seed(1)
    z = [torch.randn(40, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    p = [torch.randn(40, 6, generator=g, dtype=torch.float64) for _ in range(4)]
    dist = gsg_distances(*z)
    near, far = gsg_choice(dist, "gsg"), gsg_choice(dist, "gsg-reverse")  # the trainer's rule (GSG.selection)
    assert torch.equal(near, dist.argmin(1)) and torch.equal(far, dist.argmax(1))
    assert (dist.gather(1, far[:, None]) > dist.gather(1, near[:, None])).all()  # no ties in random data
    choices, loss = _brute_force_gsg(p, z, reverse=True)
    assert far.tolist() == choices
    assert math.isclose(float(gsg_loss(*p, *z, far)), loss, rel_tol=1e-6, abs_tol=1e-7)


@pytest.mark.parametrize("name, reverse", [("simsiam-gsg", False), ("byol-gsg", False), ("simsiam-gsg", True)])
def test_gsg_method_forward_matches_brute_force(name, reverse, make_config, cifar_small):
    """The whole GSG forward: partner permutation, projections, selection and loss, against a loop
    (``reverse``: reverse GSG, the farthest pair)."""
    cfg = make_config(name, method=MethodConfig(name=name, reverse=True)) if reverse else make_config(name)
    torch.manual_seed(0)
    method = GSG(cfg).eval()  # eval-mode BN: samples do not interact, so gradients are per sample
    if method.byol:  # give the momentum encoder different weights than the online one
        with torch.no_grad():
            for t in method.target.parameters():
                t.add_(0.05 * torch.randn_like(t))
    tr = Trainer(cfg, None, device="cpu", data=cifar_small).setup()
    idx = torch.arange(32)
    views = [v.requires_grad_(True) for v in (tr.augment(tr.train_images[idx], tr.aug_gen) for _ in range(4))]
    method.generator = torch.Generator().manual_seed(5)
    out = method(views)
    r = torch.randperm(32, generator=torch.Generator().manual_seed(5))
    xs = [views[0], views[1], views[2][r], views[3][r]]
    with torch.no_grad():
        zs = [method.online(x)[0] for x in xs]
        ps = [method.online(x)[1] for x in xs]
        targets = [method.target(x) for x in xs] if method.byol else zs
    choices, loss = _brute_force_gsg([t.double() for t in ps], [t.double() for t in targets], reverse)
    assert method.last_choice.tolist() == choices
    pick = gsg_distances(*targets).argmax(1) if reverse else gsg_distances(*targets).argmin(1)
    assert method.last_choice.tolist() == pick.tolist()
    assert math.isclose(float(out["loss"].detach()), loss, rel_tol=1e-5, abs_tol=1e-6)
    assert math.isclose(float(out["neg_dist"]), float(gsg_distances(*targets).mean()), rel_tol=1e-5)
    # stop-gradient: a view of sample i receives gradient iff it is a source of i's selected pair
    out["loss"].backward()
    source_views = {0: (0, 2), 1: (0, 3), 2: (1, 2), 3: (1, 3)}
    for v in range(4):
        gnorm = views[v].grad.flatten(1).norm(dim=1)
        if v >= 2:
            gnorm = gnorm[r]  # sample i's partner views are views[v][r[i]] (r is a permutation)
        for i, c in enumerate(choices):
            if v in source_views[c]:
                assert gnorm[i] > 0, (v, i, c)
            else:
                assert gnorm[i] == 0, (v, i, c)


# ------------------------------------------------------------------------------------ stop-gradient
@pytest.mark.parametrize("n", [2, 3, 4, 7, 128])
def test_half_shift_partner_is_a_derangement(n):
    r = half_shift_partner(n)
    assert sorted(r.tolist()) == list(range(n))  # a permutation
    assert all(r[i] != i for i in range(n))  # no image is its own partner
    assert r.tolist() == [(i + n // 2) % n for i in range(n)]


def test_mean_negative_distance_is_gsgs_neg_dist(make_config, cifar_small):
    """The probes' neg_dist for two-view methods equals GSG's own neg_dist when GSG's views 3 and 4 are views
    1 and 2 and the partner is the same, and equals a float64 loop over the four cross pairs."""
    cfg = make_config("simsiam-gsg")
    torch.manual_seed(0)
    method = GSG(cfg).eval()  # eval-mode BN: a sample's projection does not depend on the rest of the batch
    tr = Trainer(cfg, None, device="cpu", data=cifar_small).setup()
    v1, v2 = (tr.augment(tr.train_images[torch.arange(32)], tr.aug_gen) for _ in range(2))
    method.generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        out = method([v1, v2, v1, v2])
    z1, z2 = out["z"][:32], out["z"][32:]
    r = method.last_partner
    # fp32: z21 = f(v1[r]) and z1[r] agree to rounding only (the convolution may block the batch differently)
    assert math.isclose(float(mean_negative_distance(z1, z2, r)), float(out["neg_dist"]), rel_tol=1e-5)
    zd1, zd2, p = z1.double(), z2.double(), half_shift_partner(32)
    loop = sum(float((a[i] - b[p[i]]).norm()) for i in range(32) for a in (zd1, zd2) for b in (zd1, zd2)) / (4 * 32)
    assert math.isclose(float(mean_negative_distance(z1, z2)), loop, rel_tol=1e-5)  # fp32 vs float64 sums
    # a collapsed batch (every image mapped to the same point) has zero negative distance
    assert float(mean_negative_distance(z1[:1].expand(32, -1), z1[:1].expand(32, -1))) == 0.0


def _grads(module, loss):
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True), params


@pytest.mark.parametrize("stop", [True, False])
def test_simsiam_stop_gradient_through_autograd(stop, make_config, cifar_small):
    """With the stop-gradient, the gradient equals that of the loss with the targets replaced by constants;
    without it (the ablation) it does not."""
    cfg = make_config("simsiam", method=MethodConfig(name="simsiam", stop_gradient=stop))
    torch.manual_seed(0)
    method = SimSiam(cfg)
    tr = Trainer(cfg, None, device="cpu", data=cifar_small).setup()
    x = tr.train_images[:32]
    v1, v2 = tr.augment(x, tr.aug_gen), tr.augment(x, tr.aug_gen)
    g_method, params = _grads(method, method([v1, v2])["loss"])
    # the reference: targets computed separately and turned into constants (same batch -> same BN stats)
    z1, p1 = method.online(v1)
    z2, p2 = method.online(v2)
    c1, c2 = z1.detach().clone(), z2.detach().clone()
    ref = 0.5 * (-F.cosine_similarity(p1, c2).mean() - F.cosine_similarity(p2, c1).mean())
    g_ref, _ = _grads(method, ref)
    diffs = [float((a - b).abs().max()) for a, b in zip(g_method, g_ref)]
    scale = max(float(b.abs().max()) for b in g_ref)
    if stop:
        assert max(diffs) <= 1e-6 * scale
    else:
        assert max(diffs) > 1e-3 * scale


def test_byol_target_gets_no_gradient(make_config, cifar_small):
    cfg = make_config("byol")
    torch.manual_seed(0)
    method = BYOL(cfg)
    for p in method.target.parameters():  # make them *able* to receive gradient: the forward must block it
        p.requires_grad_(True)
    tr = Trainer(cfg, None, device="cpu", data=cifar_small).setup()
    x = tr.train_images[:32]
    loss = method([tr.augment(x, tr.aug_gen), tr.augment(x, tr.aug_gen)])["loss"]
    target_params = list(method.target.parameters())
    grads = torch.autograd.grad(loss, target_params + list(method.online.parameters()), allow_unused=True)
    assert all(g is None for g in grads[: len(target_params)])
    assert all(g is not None for g in grads[len(target_params) :])


# ------------------------------------------------------------------------------------------------ EMA
def test_ema_update_matches_closed_form():
    torch.manual_seed(0)
    target = torch.nn.Linear(7, 5).double()
    online = torch.nn.Linear(7, 5).double()
    t0 = [p.detach().clone() for p in target.parameters()]
    m, k = 0.9, 25
    for _ in range(k):
        update_momentum(target, online, m)
    for t, a, o in zip(target.parameters(), t0, online.parameters()):
        closed = m**k * a + (1 - m**k) * o.detach()
        torch.testing.assert_close(t.detach(), closed, atol=1e-13, rtol=1e-12)
    # one step, float32: exactly m * xi + (1 - m) * theta in the same arithmetic
    t32, o32 = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    before = [p.detach().clone() for p in t32.parameters()]
    update_momentum(t32, o32, 0.99)
    for t, b, o in zip(t32.parameters(), before, o32.parameters()):
        assert torch.equal(t.detach(), (b * 0.99).add(o.detach(), alpha=1 - 0.99))


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100, 0.99, 1.0) == 0.99
    assert cosine_momentum(100, 100, 0.99, 1.0) == 1.0
    assert math.isclose(cosine_momentum(50, 100, 0.99, 1.0), 0.995)
    assert math.isclose(cosine_momentum(25, 100, 0.9, 1.0), 1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2)


@pytest.mark.parametrize("at", ["start", "middle"])
def test_byol_training_step_moves_target_by_ema(at, make_config, cifar_small):
    """The update after optimizer step k uses BYOL's cosine momentum at k of the whole run: the base value
    at step 0 and (base + final) / 2 half-way (total steps = epochs x steps per epoch)."""
    tr = _trainer(make_config, cifar_small, "byol")
    assert tr.cfg.method.momentum_schedule == "cosine" and tr.method.total_steps == 16
    if at == "middle":
        tr.step = 8
    before = [p.detach().clone() for p in tr.method.target.parameters()]
    tr.train_step(tr.epoch_order(0)[:64])
    m = tr.method.momentum_at(tr.step - 1)
    expected = 0.99 if at == "start" else (0.99 + 1.0) / 2
    assert m == pytest.approx(expected, abs=1e-12)
    for t, b, o in zip(tr.method.target.parameters(), before, tr.method.online.encoder.parameters()):
        torch.testing.assert_close(t.detach(), b * m + (1 - m) * o.detach(), atol=1e-7, rtol=1e-6)
    # and the target is no longer the online network (it lags)
    assert any(not torch.equal(t, o) for t, o in zip(tr.method.target.parameters(), tr.method.online.encoder.parameters()))


# ------------------------------------------------------------------------------------ predictor rules
def test_directpred_rule_overwrites_linear_predictor(make_config, cifar_small):
    pred = PredictorConfig(kind="linear", rule=RuleSpec("directpred", eps=0.1), rho=0.3, freq=1)
    tr = _trainer(make_config, cifar_small, "simsiam", predictor=pred)
    out = tr.train_step(tr.epoch_order(0)[:64])
    f = out["z"].float()
    F_first = f.T @ f / f.shape[0]  # the first update initialises F-hat to the batch correlation
    torch.testing.assert_close(tr.method.fhat.F, F_first, atol=1e-5, rtol=1e-5)
    W = tr.method.predictor_matrix()
    torch.testing.assert_close(W, directpred(0.1)(F_first), atol=1e-5, rtol=1e-4)
    # second step: F-hat <- rho F + (1 - rho) batch
    out2 = tr.train_step(tr.epoch_order(0)[64:128])
    f2 = out2["z"].float()
    torch.testing.assert_close(tr.method.fhat.F, 0.3 * F_first + 0.7 * f2.T @ f2 / f2.shape[0], atol=1e-5, rtol=1e-5)
    s, U = torch.linalg.eigh(tr.method.fhat.F)
    # W_p shares F-hat's eigenvectors with p_j = sqrt(s_j / s_max) + eps
    p = (U * (tr.method.predictor_matrix() @ U)).sum(0)
    torch.testing.assert_close(p, (s.clamp(min=0) / s.max()).sqrt() + 0.1, atol=1e-4, rtol=1e-4)


def test_user_callable_rule_and_freq(make_config, cifar_small):
    from stopgrad.dynamics import matrix_rule

    @matrix_rule
    def half_identity(F):
        return 0.5 * torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)

    pred = PredictorConfig(kind="linear", rule=half_identity, rho=0.5, freq=2)
    tr = _trainer(make_config, cifar_small, "simsiam", predictor=pred)
    tr.train_step(tr.epoch_order(0)[:64])  # step 0: due
    eye = 0.5 * torch.eye(64)
    assert torch.equal(tr.method.predictor_matrix(), eye)
    tr.train_step(tr.epoch_order(0)[64:128])  # step 1: an ordinary gradient step
    assert not torch.equal(tr.method.predictor_matrix(), eye)
    tr.train_step(tr.epoch_order(0)[128:192])  # step 2: due again
    assert torch.equal(tr.method.predictor_matrix(), eye)


def test_symmetric_predictor_stays_symmetric(make_config, cifar_small):
    tr = _trainer(make_config, cifar_small, "simsiam", predictor=PredictorConfig(kind="symmetric"))
    for k in range(3):
        tr.train_step(tr.epoch_order(0)[64 * k : 64 * (k + 1)])
    W = tr.method.predictor_matrix()
    assert torch.equal(W, W.T) and float(W.abs().sum()) > 0
