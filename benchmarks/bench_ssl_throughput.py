"""SimSiam ResNet-18 on CIFAR-10 (JPEG copy), batch 512: end-to-end training throughput, augmentation included.

Ours: the uint8 dataset on the device, batched on-device augmentation (SimSiam CIFAR recipe), bf16 autocast,
channels_last, optional torch.compile; exactly the code path of ``stopgrad train`` (``Trainer.train_step``).
On a GPU an epoch (97 steps of 512) is timed with CUDA events after a warm-up epoch (which absorbs
compilation), with and without the spectral probes; the augmentation alone and the model alone are timed too.
On the CPU a few steps are timed with ``time.perf_counter`` (images/s).

Baseline (``--lightly``; lightly is a benchmark-only extra, ``pip install lightly``): the same recipe from
lightly's parts -- ``SimSiamTransform`` on PIL images in a ``DataLoader`` with worker processes, lightly's
projection/prediction heads and ``NegativeCosineSimilarity`` -- with the same model, bf16 autocast and
channels_last, no compile. The ratio of the two epoch times is printed.

Prints a table and writes JSON to ``benchmarks/results/``.

    python benchmarks/bench_ssl_throughput.py --data-root DIR_WITH_cifar10-jpeg.npz            # GPU: 1 epoch each
    python benchmarks/bench_ssl_throughput.py --data-root ... --device cpu --batch 128 --steps 3 # CPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _default_root() -> str:
    for cand in (os.environ.get("STOPGRAD_DATA", ""), REPO / ".gpu", REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "cifar10-jpeg.npz").is_file():
            return str(cand)
    return ""


class Timer:
    """CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.b.record()
            torch.cuda.synchronize()
            self.seconds = self.a.elapsed_time(self.b) / 1000
        else:
            self.seconds = time.perf_counter() - self.t0
        return False


# ------------------------------------------------------------------------------------------------- ours
def bench_ours(cfg, data, device: str, steps: int | None, log, knn: bool = True) -> dict:
    from stopgrad.ssl_models import Trainer, knn_monitor

    tr = Trainer(cfg, None, device=device, data=data).setup()
    dev = tr.device
    B = cfg.train.batch_size
    spe = tr.steps_per_epoch
    n_timed = steps or spe
    order = tr.epoch_order(0)

    def batch(i):
        i %= spe
        return order[i * B : (i + 1) * B]

    def run_steps(n, start=0):
        for i in range(start, start + n):
            tr.train_step(batch(i))

    warm = 1 if steps else spe  # a whole epoch on a GPU: compilation, cuDNN autotuning, allocator
    log(f"ours: warm-up ({warm} steps, compile={cfg.train.compile})")
    t0 = time.perf_counter()
    run_steps(warm)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    res = {"warmup_seconds": warmup_s, "steps_timed": n_timed, "batch": B, "steps_per_epoch": spe}
    # probes off (pure training), then a probe at every step, to price one probe record
    every = cfg.probe.every or 100
    tr.probe.cfg = replace(cfg.probe, every=0)
    with Timer(dev) as t:
        run_steps(n_timed)
    res["seconds_no_probes"] = t.seconds
    tr.probe.cfg = replace(cfg.probe, every=1)
    with Timer(dev) as t:
        run_steps(n_timed)
    tr.probe.cfg = cfg.probe
    per_probe = max(0.0, (t.seconds - res["seconds_no_probes"]) / n_timed)
    step_s = res["seconds_no_probes"] / n_timed
    res["probe_seconds_per_record"] = per_probe
    res["probe_every"] = every
    res["probe_overhead_fraction"] = per_probe / (every * step_s)
    # components: augmentation alone, model alone on fixed views
    with Timer(dev) as t:
        for i in range(n_timed):
            tr.views(batch(i))
    res["augment_seconds"] = t.seconds
    fixed = tr.views(batch(0))
    model, opt = tr.model, tr.optimizer

    def model_step():
        with torch.autocast(device_type=dev.type, dtype=tr.amp_dtype or torch.bfloat16, enabled=tr.amp_dtype is not None):
            out = model(fixed)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    model_step()
    with Timer(dev) as t:
        for _ in range(n_timed):
            model_step()
    res["model_seconds"] = t.seconds
    if knn:
        with Timer(dev) as t:
            acc = knn_monitor(tr.method.backbone, data, cfg.eval, tr.eval_transform, dev,
                              tr.amp_dtype if dev.type == "cuda" else None)
        res["knn_seconds"] = t.seconds
        res["knn_acc_after_benchmark"] = acc
    scale = spe / n_timed
    res["epoch_seconds"] = res["seconds_no_probes"] * scale
    res["images_per_second"] = n_timed * B / res["seconds_no_probes"]
    if dev.type == "cuda":
        res["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


# ---------------------------------------------------------------------------------------------- lightly
def run_lightly(data, args, steps, log) -> dict:
    """The lightly baseline (benchmarks/bench_ssl_lightly.py): in this process when lightly imports here,
    else in ``--lightly-python`` (an interpreter of an environment that has lightly) as a subprocess."""
    import importlib.util
    import subprocess
    import tempfile

    here = Path(__file__).resolve().parent
    if importlib.util.find_spec("lightly") is not None:
        sys.path.insert(0, str(here))
        from bench_ssl_lightly import bench_lightly

        images = data.train_images.permute(0, 2, 3, 1).contiguous().numpy()
        return bench_lightly(images, args.device, args.batch, steps, args.workers, log)
    if not args.lightly_python:
        return {"skipped": "lightly is not installed here; pip install lightly, or pass --lightly-python "
                           "PATH_TO_A_PYTHON_WITH_LIGHTLY"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lightly.json"
        cmd = [args.lightly_python, str(here / "bench_ssl_lightly.py"), "--data-root", args.data_root,
               "--device", args.device, "--batch", str(args.batch), "--workers", str(args.workers), "--out", str(out)]
        if steps:
            cmd += ["--steps", str(steps)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        log("lightly: running " + " ".join(cmd))
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=sys.stderr)
        if proc.returncode != 0 or not out.is_file():
            return {"skipped": f"the lightly subprocess failed (exit {proc.returncode})"}
        res = json.loads(out.read_text())
        res["python"] = args.lightly_python
        return res


# ------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=_default_root())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--config", default=str(REPO / "configs" / "simsiam-cifar10.toml"))
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None, help="time this many steps (default: one epoch on a GPU, 3 on the CPU)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile the networks and augmentation (default: the config's, on CUDA)")
    ap.add_argument("--compile-mode", default=None)
    ap.add_argument("--lightly", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--lightly-python", default=os.environ.get("LIGHTLY_PYTHON", ""),
                    help="python of an environment with lightly (e.g. .venv-bench/bin/python) if this one lacks it")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--probe-every", type=int, default=None)
    ap.add_argument("--knn", action=argparse.BooleanOptionalAction, default=None,
                    help="time the kNN monitor over the full bank (default: on a GPU only)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/ssl_throughput_<device>.json)")
    args = ap.parse_args(argv)

    from stopgrad.cmd_train import load_train_config
    from stopgrad.ssl_models import load_image_data

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    steps = args.steps if args.steps is not None else (None if cuda else 3)

    def log(msg):
        print(f"[bench] {msg}", file=sys.stderr, flush=True)

    cfg = load_train_config(args.config)
    train = replace(cfg.train, batch_size=args.batch, progress=False)
    if args.compile is not None:
        train = replace(train, compile=args.compile)
    if args.compile_mode:
        train = replace(train, compile_mode=args.compile_mode)
    cfg = replace(cfg, train=train)
    if args.probe_every is not None:
        cfg = replace(cfg, probe=replace(cfg.probe, every=args.probe_every))
    if not args.data_root:
        print("no data root: pass --data-root or set STOPGRAD_DATA", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    data = load_image_data(cfg.data, args.data_root)
    log(f"data: {data.train_images.shape[0]} train images in {time.perf_counter() - t0:.1f} s")
    dev_name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    result = {
        "benchmark": "SimSiam ResNet-18 CIFAR-10 (JPEG copy) end-to-end training",
        "device": dev_name, "torch": torch.__version__, "python": platform.python_version(),
        "batch": args.batch, "config": Path(args.config).name, "compile": cfg.train.compile and cuda,
        "precision": "bf16 autocast" if cuda else "fp32", "timing": "CUDA events" if cuda else "perf_counter",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    result["ours"] = bench_ours(cfg, data, args.device, steps, log, knn=cuda if args.knn is None else args.knn)
    if args.lightly:
        result["lightly"] = run_lightly(data, args, steps, log)
        if "epoch_seconds" in result["lightly"]:
            result["speedup_vs_lightly"] = result["lightly"]["epoch_seconds"] / result["ours"]["epoch_seconds"]
    o = result["ours"]
    rows = [
        ("device", dev_name),
        ("ours: epoch time", f"{o['epoch_seconds']:.2f} s  ({o['images_per_second']:.0f} images/s, "
                             f"{o['steps_timed']} steps timed)"),
        ("  augmentation alone", f"{o['augment_seconds'] * o['steps_per_epoch'] / o['steps_timed']:.2f} s/epoch"),
        ("  model alone", f"{o['model_seconds'] * o['steps_per_epoch'] / o['steps_timed']:.2f} s/epoch"),
    ]
    rows.append(("  one probe record", f"{1000 * o['probe_seconds_per_record']:.1f} ms = +{100 * o['probe_overhead_fraction']:.2f}% "
                                        f"of training time at one probe per {o['probe_every']} steps"))
    if "knn_seconds" in o:
        rows.append(("  kNN monitor (50k bank)", f"{o['knn_seconds']:.2f} s"))
    rows.append(("  warm-up", f"{o['warmup_seconds']:.1f} s"))
    lt = result.get("lightly", {})
    if "epoch_seconds" in lt:
        rows.append(("lightly: epoch time", f"{lt['epoch_seconds']:.2f} s  ({lt['images_per_second']:.0f} images/s, "
                                            f"{lt['workers']} workers)"))
        rows.append(("speed-up vs lightly", f"{result['speedup_vs_lightly']:.2f}x"))
    elif lt:
        rows.append(("lightly", lt["skipped"]))
    width = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    tag = "gpu" if cuda else "cpu"
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"ssl_throughput_{tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
