"""Batched image augmentation on the device, with independent random parameters per sample.

The input is a uint8 batch (B, 3, H, W) already on the device; the output is the normalised float
batch (B, 3, S, S). Nothing loops over images in Python, so the same code serves a GPU (where it runs
in a few kernels, or fewer under torch.compile) and the CPU (tests).

Operations, in the order of the SimSiam/MoCo v2 recipe (torchvision semantics on float images in [0, 1]):

1. RandomResizedCrop(S, scale, ratio): torchvision's sampler (10 tries, then the centre-crop fallback),
   integer crop boxes, bilinear resampling with the source coordinate clamped to the crop as
   ``F.resized_crop(..., antialias=False)`` does. Implemented as one ``grid_sample`` with a per-sample
   separable grid. No antialiasing when a crop is shrunk (irrelevant for CIFAR's upsampled crops).
2. Horizontal flip (folded into the crop's grid; exact, since the later ops commute with a flip).
3. ColorJitter with probability p: brightness, contrast, saturation (blends with black, the mean grey
   level, the grey image) and hue (a real HSV hue rotation), in a fresh random order per sample like
   torchvision (``jitter_order = "random"``) or in the fixed order b, c, s, h.
4. Grayscale with probability p (ITU-R 601-2 luma, as torchvision).
5. Gaussian blur with probability p, sigma ~ U(blur_sigma), reflect padding (optional).
6. Solarize with probability p (optional).
7. Normalise with the dataset's mean and std; optional dtype cast and channels_last layout.

Randomness: all parameters of a batch come from one ``torch.rand`` call on an explicit generator, so a
run is reproducible and its augmentation stream can be checkpointed (``generator.get_state()``).
For DDP, :meth:`GPUAugment.sample` draws the global batch's parameters on every process and each
process applies its own slice, so a W-process run sees exactly the views of a one-process run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import AugmentConfig

__all__ = ["AugmentParams", "EvalTransform", "GPUAugment", "hsv_to_rgb", "rgb_to_grayscale", "rgb_to_hsv"]

_LUMA = (0.2989, 0.587, 0.114)
_N_TRIES = 10  # torchvision's RandomResizedCrop tries
# columns of the per-sample uniform draw
_C_SCALE = 0
_C_RATIO = _C_SCALE + _N_TRIES
_C_I = _C_RATIO + _N_TRIES
_C_J = _C_I + 1
_C_FLIP = _C_J + 1
_C_JIT = _C_FLIP + 1
_C_FACT = _C_JIT + 1  # 4 columns: brightness, contrast, saturation, hue
_C_ORDER = _C_FACT + 4  # 4 columns, argsorted into a permutation
_C_GRAY = _C_ORDER + 4
_C_BLUR = _C_GRAY + 1
_C_SIGMA = _C_BLUR + 1
_C_SOLAR = _C_SIGMA + 1
_N_COLS = _C_SOLAR + 1


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (..., 1, H, W) luma 0.2989 R + 0.587 G + 0.114 B (torchvision)."""
    r, g, b = x.unbind(dim=-3)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(-3)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1) (torchvision's ``_rgb2hsv``)."""
    r, g, b = x.unbind(dim=-3)
    maxc = x.amax(dim=-3)
    minc = x.amin(dim=-3)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_g & ~is_r
    h = is_r * (bc - gc) + is_g * (2.0 + rc - bc) + is_b * (4.0 + gc - rc)
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`: channel n = V - V S clamp(min(k, 4 - k), 0, 1), k = (n + 6H) mod 6
    for n = 5, 3, 1 (R, G, B); the same values as torchvision's piecewise ``_hsv2rgb``."""
    h, s, v = x.unbind(dim=-3)
    h6 = h * 6.0
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + h6, 6.0)
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=-3)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of (B, 3, H, W) by ``shift`` (B,) (fraction of a turn)."""
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))


@dataclass
class AugmentParams:
    """Per-sample parameters of one batch (first dim B), all on the augmentation device.

    box: (B, 4) crop top, left, height, width in input pixels (floats holding integers).
    flip, jitter, gray, blur, solarize: (B,) bool. factors: (B, 4) brightness, contrast, saturation
    factors and hue shift (identity values where jitter is off). order: (B, 4) the op order
    (0 b, 1 c, 2 s, 3 h). sigma: (B,) blur sigma (where blur is off, a sigma so small the kernel is a delta).
    """

    box: torch.Tensor
    flip: torch.Tensor
    jitter: torch.Tensor
    factors: torch.Tensor
    order: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    sigma: torch.Tensor
    solarize: torch.Tensor

    def select(self, index) -> AugmentParams:
        """The parameters of a subset of the batch (a slice, an index tensor or a bool mask)."""
        return AugmentParams(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})

    def __len__(self) -> int:
        return self.box.shape[0]


class GPUAugment:
    """Batched augmentation for input images of size (H, W) to square crops of side ``size``.

    Args:
        cfg: the recipe (see :class:`~stopgrad.ssl_models.AugmentConfig`).
        in_size: (H, W) of the stored images.
        mean, std: per-channel normalisation of the [0, 1] output.
        out_dtype: dtype of the returned batch (float32, or bfloat16 to halve the traffic into the model;
            float64 computes the whole image path in float64, for ``train.precision = 'fp64'``).
        channels_last: return the batch in channels_last layout.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        in_size: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        out_dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ):
        self.cfg = cfg
        self.in_h, self.in_w = int(in_size[0]), int(in_size[1])
        self.size = int(cfg.crop_size or min(self.in_h, self.in_w))
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.out_dtype = out_dtype
        # the image path runs in float32, or in float64 when float64 is asked for
        self.compute_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
        self.channels_last = channels_last
        k = cfg.blur_kernel or max(3, int(0.1 * self.size) // 2 * 2 + 1)
        self.blur_kernel = int(k)
        self._consts: dict = {}
        self._apply = self._apply_impl

    def compile(self, **kwargs) -> GPUAugment:
        """Compile the (parameter-free) image path with torch.compile; sampling stays eager. Should the
        compiler fail on this torch version, the eager path is used (with a warning) instead."""
        compiled = torch.compile(self._apply_impl, **kwargs)

        def apply(images, params):
            try:
                return compiled(images, params)
            except Exception as exc:  # a compiler failure must not end a training run
                import warnings

                warnings.warn(f"torch.compile of the augmentation failed ({type(exc).__name__}: {exc}); "
                              "running it eagerly", stacklevel=2)
                self._apply = self._apply_impl
                return self._apply_impl(images, params)

        self._apply = apply
        return self

    # ----------------------------------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator) -> AugmentParams:
        """Draw the parameters of ``n`` samples from ``generator`` (on the generator's device)."""
        cfg = self.cfg
        dev = generator.device
        u = torch.rand(n, _N_COLS, generator=generator, device=dev, dtype=torch.float64)
        H, W = float(self.in_h), float(self.in_w)
        area = H * W
        lo, hi = cfg.crop_scale
        target = area * (lo + (hi - lo) * u[:, _C_SCALE:_C_RATIO])
        lr0, lr1 = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
        aspect = torch.exp(lr0 + (lr1 - lr0) * u[:, _C_RATIO:_C_I])
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
        first = torch.argmax(ok.to(torch.int8), dim=1, keepdim=True)  # first valid try
        any_ok = ok.any(dim=1)
        w = torch.gather(w, 1, first).squeeze(1)
        h = torch.gather(h, 1, first).squeeze(1)
        # torchvision's fallback: a centre crop whose aspect ratio is clamped into ``ratio``
        in_ratio = W / H
        if in_ratio < cfg.crop_ratio[0]:
            fw, fh = W, float(round(W / cfg.crop_ratio[0]))
        elif in_ratio > cfg.crop_ratio[1]:
            fh, fw = H, float(round(H * cfg.crop_ratio[1]))
        else:
            fw, fh = W, H
        w = torch.where(any_ok, w, torch.full_like(w, fw))
        h = torch.where(any_ok, h, torch.full_like(h, fh))
        i = torch.floor(u[:, _C_I] * (H - h + 1)).clamp(max=H - h)
        j = torch.floor(u[:, _C_J] * (W - w + 1)).clamp(max=W - w)
        i = torch.where(any_ok, i, torch.floor((H - h) / 2))
        j = torch.where(any_ok, j, torch.floor((W - w) / 2))
        box = torch.stack((i, j, h, w), dim=1).to(self.compute_dtype)

        flip = u[:, _C_FLIP] < cfg.flip_p
        jitter = u[:, _C_JIT] < cfg.jitter_p
        f = u[:, _C_FACT:_C_ORDER].to(self.compute_dtype)
        lows, highs, centre = self._const("jitter_range", dev, lambda: self._jitter_range(dev))
        factors = lows + (highs - lows) * f
        factors = torch.where(jitter.unsqueeze(1), factors, centre.expand_as(factors))
        if cfg.jitter_order == "random":
            order = torch.argsort(u[:, _C_ORDER:_C_GRAY], dim=1)
        else:
            order = torch.arange(4, device=dev).expand(n, 4)
        gray = u[:, _C_GRAY] < cfg.grayscale_p
        blur = u[:, _C_BLUR] < cfg.blur_p
        s0, s1 = cfg.blur_sigma
        sigma = (s0 + (s1 - s0) * u[:, _C_SIGMA]).to(self.compute_dtype)
        sigma = torch.where(blur, sigma, torch.full_like(sigma, 1e-3))
        solarize = u[:, _C_SOLAR] < cfg.solarize_p
        return AugmentParams(box, flip, jitter, factors, order, gray, blur, sigma, solarize)

    def _jitter_range(self, dev):
        c = self.cfg
        lows = [max(0.0, 1.0 - c.brightness), max(0.0, 1.0 - c.contrast), max(0.0, 1.0 - c.saturation), -c.hue]
        highs = [1.0 + c.brightness, 1.0 + c.contrast, 1.0 + c.saturation, c.hue]
        t = lambda v: torch.tensor(v, device=dev, dtype=self.compute_dtype)  # noqa: E731
        return t(lows), t(highs), t([1.0, 1.0, 1.0, 0.0])

    # -------------------------------------------------------------------------------------- image path
    def _const(self, name: str, device: torch.device, fn):
        key = (name, device)
        if key not in self._consts:
            self._consts[key] = fn()
        return self._consts[key]

    def _grid(self, box: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        S = self.size
        dev = box.device
        t = self._const("t", dev, lambda: torch.arange(S, device=dev, dtype=self.compute_dtype) + 0.5)
        i, j, h, w = box.unbind(1)
        xs = j[:, None] + t[None, :] * (w / S)[:, None] - 0.5
        ys = i[:, None] + t[None, :] * (h / S)[:, None] - 0.5
        xs = torch.minimum(torch.maximum(xs, j[:, None]), (j + w - 1)[:, None])
        ys = torch.minimum(torch.maximum(ys, i[:, None]), (i + h - 1)[:, None])
        xs = torch.where(flip[:, None], xs.flip(1), xs)
        gx = (2.0 * xs + 1.0) / self.in_w - 1.0  # align_corners=False normalisation
        gy = (2.0 * ys + 1.0) / self.in_h - 1.0
        n = box.shape[0]
        return torch.stack((gx[:, None, :].expand(n, S, S), gy[:, :, None].expand(n, S, S)), dim=-1)

    def _jitter(self, x: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        fac = p.factors
        for k in range(4):
            op = p.order[:, k]
            f = torch.gather(fac, 1, op.unsqueeze(1)).squeeze(1)
            gray = rgb_to_grayscale(x)
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
            b = (op == 0).view(-1, 1, 1, 1)
            c = (op == 1).view(-1, 1, 1, 1)
            ref = torch.where(b, torch.zeros_like(gray), torch.where(c, mean.expand_as(gray), gray))
            fv = f.view(-1, 1, 1, 1)
            blended = (fv * x + (1.0 - fv) * ref).clamp(0.0, 1.0)
            is_hue = (op == 3) & p.jitter
            if self.cfg.hue > 0:
                hued = _adjust_hue(x, torch.where(is_hue, f, torch.zeros_like(f)))
                x = torch.where(is_hue.view(-1, 1, 1, 1), hued, torch.where((op == 3).view(-1, 1, 1, 1), x, blended))
            else:
                x = torch.where((op == 3).view(-1, 1, 1, 1), x, blended)
        return x

    def _blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        K = self.blur_kernel
        dev = x.device
        t = self._const(("k", K), dev, lambda: torch.arange(K, device=dev, dtype=self.compute_dtype) - (K - 1) / 2)
        k = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
        k = k / k.sum(dim=1, keepdim=True)  # (B, K)
        n, c, hh, ww = x.shape
        kk = k.repeat_interleave(c, dim=0)  # (B*C, K)
        y = x.reshape(1, n * c, hh, ww)
        pad = K // 2
        y = F.pad(y, (pad, pad, 0, 0), mode="reflect")
        y = F.conv2d(y, kk.view(n * c, 1, 1, K), groups=n * c)
        y = F.pad(y, (0, 0, pad, pad), mode="reflect")
        y = F.conv2d(y, kk.view(n * c, 1, K, 1), groups=n * c)
        return y.view(n, c, hh, ww)

    def _apply_impl(self, images: torch.Tensor, p: AugmentParams) -> torch.Tensor:
        cd = self.compute_dtype
        x = images.to(cd).div_(255.0) if images.dtype == torch.uint8 else images.to(cd)
        grid = self._grid(p.box, p.flip)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        cfg = self.cfg
        if cfg.jitter_p > 0:
            x = self._jitter(x, p)
        if cfg.grayscale_p > 0:
            x = torch.where(p.gray.view(-1, 1, 1, 1), rgb_to_grayscale(x).expand_as(x), x)
        if cfg.blur_p > 0:
            x = self._blur(x, p.sigma)
        if cfg.solarize_p > 0:
            x = torch.where(p.solarize.view(-1, 1, 1, 1) & (x >= cfg.solarize_threshold), 1.0 - x, x)
        dev = x.device
        mean = self._const("mean", dev, lambda: torch.tensor(self.mean, device=dev, dtype=cd).view(1, 3, 1, 1))
        istd = self._const("istd", dev, lambda: 1.0 / torch.tensor(self.std, device=dev, dtype=cd).view(1, 3, 1, 1))
        x = ((x - mean) * istd).to(self.out_dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def apply(self, images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Augment uint8 (or [0, 1] float) ``images`` (B, 3, H, W) with the given per-sample ``params``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W); got {tuple(images.shape)}")
        if len(params) != images.shape[0]:
            raise ValueError(f"{len(params)} parameter sets for {images.shape[0]} images")
        return self._apply(images, params)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw fresh parameters for every image and augment the batch."""
        return self.apply(images, self.sample(images.shape[0], generator))


class EvalTransform:
    """The test transform: uint8 (B, 3, H, W) -> normalised float (B, 3, S, S), resized when S differs
    from the stored size (bilinear with antialias), else only scaled and normalised."""

    def __init__(self, size: int, mean, std, out_dtype=torch.float32, channels_last: bool = False):
        self.size = int(size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.out_dtype, self.channels_last = out_dtype, channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        cd = torch.float64 if self.out_dtype == torch.float64 else torch.float32
        x = images.to(cd) / 255.0 if images.dtype == torch.uint8 else images.to(cd)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        mean = torch.tensor(self.mean, device=x.device, dtype=cd).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=cd).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(self.out_dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
