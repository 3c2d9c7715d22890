"""The batched augmentation equals torchvision's per-image ops with the same per-sample parameters."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from stopgrad.ssl_models import AugmentConfig, GPUAugment, hsv_to_rgb, rgb_to_hsv

OPS = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


def _aug(**kw) -> GPUAugment:
    return GPUAugment(AugmentConfig(**kw), (32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.fixture(scope="module")
def images(cifar):
    return cifar.train_images[:48]


def test_crop_and_flip_match_torchvision_resized_crop(images):
    aug = _aug(jitter_p=0.0, grayscale_p=0.0)
    p = aug.sample(len(images), torch.Generator().manual_seed(1))
    out = aug.apply(images, p)
    x = images.float() / 255
    assert p.flip.any() and not p.flip.all()
    for k in range(len(images)):
        i, j, h, w = (int(v) for v in p.box[k])
        ref = TF.resized_crop(x[k], i, j, h, w, [32, 32], antialias=False)
        if p.flip[k]:
            ref = TF.horizontal_flip(ref)
        torch.testing.assert_close(out[k], ref, atol=2e-6, rtol=0)


def test_crop_sampler_respects_scale_and_ratio():
    aug = _aug(crop_scale=(0.2, 1.0))
    p = aug.sample(4000, torch.Generator().manual_seed(2))
    i, j, h, w = p.box.unbind(1)
    area = h * w / 1024
    assert (i >= 0).all() and (j >= 0).all() and (i + h <= 32).all() and (j + w <= 32).all()
    # integer rounding of w, h moves the area and ratio a little outside the continuous ranges
    assert area.min() >= 0.2 * 0.75 and area.max() <= 1.0
    ratio = w / h
    assert ratio.min() >= 0.75 * 0.85 and ratio.max() <= 4 / 3 * 1.18
    assert 0.5 < area.mean() < 0.7  # U(0.2, 1) has mean 0.6
    # the offsets cover the whole admissible range
    assert (i == 0).any() and (i + h == 32).any()


def test_crop_fallback_is_torchvision_centre_crop():
    # scale and ratio that no crop of a 32x32 image can meet: every sample takes the fallback
    aug = _aug(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0))
    p = aug.sample(10, torch.Generator().manual_seed(3))
    expect = torch.tensor([8.0, 0.0, 16.0, 32.0])  # w = 32, h = round(32 / 2) = 16, centred
    assert torch.equal(p.box, expect.expand(10, 4))


def test_colour_jitter_random_order_matches_torchvision(images):
    aug = _aug(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.8, grayscale_p=0.0)
    p = aug.sample(len(images), torch.Generator().manual_seed(4))
    out = aug.apply(images, p)
    x = images.float() / 255
    orders = {tuple(o) for o in p.order.tolist()}
    assert len(orders) > 5, "each sample draws its own order"
    assert p.jitter.any() and not p.jitter.all()
    for k in range(len(images)):
        ref = x[k]
        if p.jitter[k]:
            for op in p.order[k].tolist():
                ref = OPS[op](ref, float(p.factors[k, op]))
        torch.testing.assert_close(out[k], ref, atol=1e-5, rtol=0)


def test_jitter_factor_ranges_follow_the_recipe():
    aug = _aug(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, jitter_p=1.0)
    f = aug.sample(5000, torch.Generator().manual_seed(5)).factors
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1)]):
        assert lo <= float(f[:, col].min()) < lo + 0.01 and hi - 0.01 < float(f[:, col].max()) <= hi


def test_hsv_round_trip_and_torchvision_agreement(images):
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    x = images.float() / 255
    torch.testing.assert_close(rgb_to_hsv(x), _rgb_to_hsv(x), atol=1e-6, rtol=0)
    hsv = _rgb_to_hsv(x)
    torch.testing.assert_close(hsv_to_rgb(hsv), _hsv_to_rgb(hsv), atol=1e-6, rtol=0)
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=3e-6, rtol=0)


def test_grayscale_blur_solarize_match_torchvision(images):
    aug = _aug(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.5,
               blur_p=0.5, blur_kernel=5, solarize_p=0.5)
    p = aug.sample(len(images), torch.Generator().manual_seed(6))
    out = aug.apply(images, p)
    x = images.float() / 255
    for flag in (p.gray, p.blur, p.solarize):
        assert flag.any() and not flag.all()
    for k in range(len(images)):
        ref = x[k]
        if p.gray[k]:
            ref = TF.rgb_to_grayscale(ref, num_output_channels=3)
        if p.blur[k]:
            s = float(p.sigma[k])
            ref = TF.gaussian_blur(ref, [5, 5], [s, s])
        if p.solarize[k]:
            ref = TF.solarize(ref, 0.5)
        torch.testing.assert_close(out[k], ref, atol=2e-6, rtol=0)


def test_normalisation_dtype_layout(images):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    aug = GPUAugment(AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                                   grayscale_p=0.0), (32, 32), mean, std, out_dtype=torch.bfloat16,
                     channels_last=True)
    out = aug(images, torch.Generator().manual_seed(7))
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    ref = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out.float(), ref, atol=0.02, rtol=0.01)


def test_seeded_and_independent_per_sample(images):
    aug = _aug()
    a = aug(images, torch.Generator().manual_seed(11))
    b = aug(images, torch.Generator().manual_seed(11))
    c = aug(images, torch.Generator().manual_seed(12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # the same image repeated gets different views within one batch
    same = images[:1].expand(16, -1, -1, -1)
    v = aug(same, torch.Generator().manual_seed(13))
    diffs = (v[1:] - v[:1]).abs().flatten(1).amax(1)
    assert (diffs > 1e-3).all()


def test_params_slice_reproduces_the_full_batch(images):
    """What a DDP process does: sample the global batch's parameters, apply its interleaved shard."""
    aug = _aug(blur_p=0.5)
    p = aug.sample(len(images), torch.Generator().manual_seed(14))
    full = aug.apply(images, p)
    for r in range(2):
        shard = slice(r, None, 2)
        torch.testing.assert_close(aug.apply(images[shard], p.select(shard)), full[shard], atol=0, rtol=0)


def test_default_recipe_is_simsiam_cifar():
    c = AugmentConfig()
    assert c.crop_scale == (0.2, 1.0) and math.isclose(c.crop_ratio[0], 0.75)
    assert (c.brightness, c.contrast, c.saturation, c.hue, c.jitter_p) == (0.4, 0.4, 0.4, 0.1, 0.8)
    assert c.grayscale_p == 0.2 and c.flip_p == 0.5 and c.blur_p == 0.0 and c.jitter_order == "random"


def test_float64_output_computes_the_image_path_in_float64(images):
    """``out_dtype = float64`` (``train.precision = "fp64"``) runs the whole image path in float64, not a
    float32 result cast up: the float32 path's crop, flip, grayscale and blur differ from it by their
    float32 round-off (a few operations on values of order 1: under 1e-6, with unit std), while the float64
    result keeps digits below float32's resolution. Jitter and solarize are off: their thresholds and the
    hue's division by the chroma can turn a round-off into a large difference."""
    cfg = AugmentConfig(jitter_p=0.0, grayscale_p=0.5, blur_p=0.5, solarize_p=0.0)
    a32 = GPUAugment(cfg, (32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    a64 = GPUAugment(cfg, (32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), out_dtype=torch.float64)
    p = a32.sample(len(images), torch.Generator().manual_seed(15))
    y32, y64 = a32.apply(images, p), a64.apply(images, p)
    assert y32.dtype == torch.float32 and y64.dtype == torch.float64
    torch.testing.assert_close(y64, y32.double(), atol=1e-6, rtol=0)
    assert not torch.equal(y64, y64.float().double())  # not representable in float32: computed in float64
