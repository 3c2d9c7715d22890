"""The lightly-built SimSiam baseline of ``bench_ssl_throughput.py`` (standalone: torch, torchvision, numpy,
Pillow and lightly only, so it runs in a separate environment that has lightly).

The same recipe as ours, built from lightly's parts: ``SimSiamTransform`` (RRC scale 0.2-1, colour jitter
0.4/0.4/0.4/0.1 p=0.8, grayscale 0.2, flip, no blur) on PIL images in a ``DataLoader`` with worker
processes, lightly's 2-layer projection head (BN, 2048-d) and ``SimSiamPredictionHead`` (2048 -> 512 ->
2048), ``NegativeCosineSimilarity``; ResNet-18 with the CIFAR stem; SGD lr 0.06 x batch/256; bf16 autocast
and channels_last on a GPU, no compile. Timing: CUDA events on a GPU (after a warm-up), perf_counter on the CPU.

    python benchmarks/bench_ssl_lightly.py --data-root DIR --out result.json [--steps N] [--workers 16]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
import torch


def load_cifar_train(path: str) -> np.ndarray:
    """Decode the packed CIFAR-10 training images (N, 32, 32, 3) uint8 with Pillow."""
    from PIL import Image

    with np.load(path) as z:
        jpg, off = z["train_jpeg"], z["train_offsets"]
    buf = jpg.tobytes()
    out = np.empty((len(off) - 1, 32, 32, 3), np.uint8)
    for i in range(len(off) - 1):
        out[i] = np.asarray(Image.open(io.BytesIO(buf[off[i] : off[i + 1]])).convert("RGB"))
    return out


class _PILSet(torch.utils.data.Dataset):
    def __init__(self, arr, transform):
        self.arr, self.transform = arr, transform

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.arr[i]))


def bench_lightly(images: np.ndarray, device: str = "auto", batch: int = 512, steps: int | None = None,
                  workers: int = 16, log=print) -> dict:
    """Time SimSiam steps of the lightly-built pipeline; ``steps=None``: one epoch after a 20-step warm-up."""
    try:
        import lightly
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import ProjectionHead, SimSiamPredictionHead
        from lightly.transforms import SimSiamTransform
    except ImportError as exc:
        return {"skipped": f"lightly not importable ({exc}); pip install lightly"}
    import torchvision
    from torch import nn

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    transform = SimSiamTransform(input_size=32, gaussian_blur=0.0)
    loader = torch.utils.data.DataLoader(
        _PILSet(images, transform), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=dev.type == "cuda", persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    net = torchvision.models.resnet18()
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    proj = ProjectionHead([(512, 2048, nn.BatchNorm1d(2048), nn.ReLU()), (2048, 2048, nn.BatchNorm1d(2048), None)])
    pred = SimSiamPredictionHead(2048, 512, 2048)
    model = nn.ModuleDict(dict(backbone=net, proj=proj, pred=pred)).to(dev)
    cuda = dev.type == "cuda"
    if cuda:
        model.to(memory_format=torch.channels_last)
    crit = NegativeCosineSimilarity()
    opt = torch.optim.SGD(model.parameters(), lr=0.06 * batch / 256, momentum=0.9, weight_decay=5e-4)

    def step(views):
        x0, x1 = (v.to(dev, non_blocking=True) for v in views)
        if cuda:
            x0 = x0.contiguous(memory_format=torch.channels_last)
            x1 = x1.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
            z0 = model["proj"](model["backbone"](x0))
            z1 = model["proj"](model["backbone"](x1))
            p0, p1 = model["pred"](z0), model["pred"](z1)
        loss = 0.5 * (crit(p0.float(), z1.detach().float()) + crit(p1.float(), z0.detach().float()))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    spe = len(loader)
    n_timed = steps or spe
    it = iter(loader)
    warm = 1 if steps else min(spe, 20)
    log(f"lightly: warm-up ({warm} steps, {workers} workers)")
    for _ in range(warm):
        step(next(it))
    if not steps:
        it = iter(loader)
    if cuda:
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
    t0 = time.perf_counter()
    for _ in range(n_timed):
        try:
            views = next(it)
        except StopIteration:
            it = iter(loader)
            views = next(it)
        step(views)
    if cuda:
        b.record()
        torch.cuda.synchronize()
        seconds = a.elapsed_time(b) / 1000
    else:
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "steps_timed": n_timed, "steps_per_epoch": spe,
            "epoch_seconds": seconds * spe / n_timed, "images_per_second": n_timed * batch / seconds,
            "workers": workers, "batch": batch, "device": str(dev), "torch": torch.__version__,
            "lightly_version": getattr(lightly, "__version__", "?")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    images = load_cifar_train(os.path.join(args.data_root, "cifar10-jpeg.npz"))
    print(f"[lightly] decoded {len(images)} images in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    res = bench_lightly(images, args.device, args.batch, args.steps, args.workers,
                        log=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=2)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
