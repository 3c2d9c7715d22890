"""The training loop: data on the device, batched augmentation, one optimizer step per global batch,
probes, kNN monitor, atomic checkpoints, resume, DDP.

Determinism: every random draw comes from ``train.seed``: the network init (torch's global RNG seeded
before construction), the data order (a fresh generator per epoch, seeded from seed and epoch), the
augmentation parameters (one generator on the device, checkpointed) and the method's own draws (GSG's
partners, MoCo's shuffle; one generator per process, checkpointed). On the CPU a resumed run continues
bitwise to the same weights as an uninterrupted one.

DDP (launched by ``torchrun``): every process holds the whole uint8 dataset, draws the same global batch
indices and the same augmentation parameters for the global batch, and augments and trains on its
interleaved shard (rank r takes samples r, r + W, ...). Gradients are averaged by DDP; SyncBatchNorm on
CUDA (``train.sync_bn``; MoCo's key encoder keeps per-process BN for shuffle-BN), per-process BatchNorm
otherwise (a one-process run with ``train.bn_splits = W`` normalises identically). Only rank 0 writes
files and evaluates; the kNN accuracy is broadcast so every process holds the same history. Every check
that can stop the run (a non-finite loss, a stop request) is agreed on by all processes, so they stop
together; a process group the trainer created is destroyed when the run ends.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from stopgrad.analysis import atomic_path, write_netcdf
from stopgrad.dynamics import ConfigError

from . import distributed as D
from .augment import EvalTransform, GPUAugment
from .batchnorm import convert_split_batchnorm
from .checkpoint import CHECKPOINT_NAME, first_nonfinite, load_checkpoint, save_checkpoint
from .config import TrainConfig, config_to_dict, config_to_toml
from .data import ImageData, load_image_data
from .errors import TrainingError
from .evaluation import knn_monitor
from .methods import build_method
from .momentum import deactivate_requires_grad
from .optim import LRSchedule, build_optimizer
from .precision import param_dtype
from .probes import SpectralProbe

__all__ = ["TrainResult", "Trainer", "convert_batchnorm", "train"]

#: config keys that may differ between a run and its resumption (they do not change the trajectory;
#: train.fuse_views is a removed key that older checkpoints still hold).
RESUME_FREE = {"train.max_steps", "train.progress", "train.log_every", "train.checkpoint_every",
               "train.compile", "train.compile_mode", "data.root", "data.download", "train.fuse_views"}
RESUME_FREE_TABLES = ("eval.",)

#: the files a run writes into its folder (a folder holding one of them but no checkpoint is another run's)
RUN_FILES = ("config.toml", "metrics.nc", "summary.json", "eval.json")
#: the lock file that marks a run folder in use (flock, released when the process ends, even by SIGKILL)
LOCK_NAME = ".stopgrad-train.lock"


def _starts_as_main() -> bool:
    """Rank 0, also before the process group exists (torchrun's RANK)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return D.is_main()
    return int(os.environ.get("RANK", "0")) == 0


def _write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


class _FolderLock:
    """An exclusive, non-blocking ``flock`` on ``DIR/.stopgrad-train.lock``: one ``train`` per run folder.

    The kernel releases it when the process ends, however it ends, so a killed run leaves no stale lock.
    Without ``fcntl`` (Windows) there is no lock."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise TrainingError(f"{self.path.parent} is in use by another `stopgrad train` (pid {holder}); "
                                "wait for it to end, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


@dataclass
class TrainResult:
    """What a finished (or stopped) run reports; also written to ``DIR/summary.json``."""

    out_dir: str
    steps: int
    epochs: float
    status: str  # "finished", "max_steps" or "interrupted"
    final_loss: float
    knn_last: float | None  # last and best kNN accuracy after training steps (the step-0 baseline excluded)
    knn_best: float | None
    knn_start: float | None  # the step-0 baseline (eval.knn_at_start), reported separately
    train_seconds: float
    images_per_second: float
    probe_seconds: float
    probe_fraction: float
    device: str
    world_size: int


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class _StopRequest:
    """SIGINT/SIGTERM set a flag checked between steps (a second SIGINT interrupts at once)."""

    def __init__(self):
        self.flag = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _log(msg: str) -> None:
    if D.is_main():
        print(f"stopgrad: {msg}", file=sys.stderr, flush=True)


def derived_seed(seed: int, salt: int) -> int:
    """The seed of one stream (augmentation, data order, the method's draws) from ``train.seed``:
    ``(seed * 1_000_003 + salt) mod 2**63``, within torch's seed range for every seed in [0, 2**63 - 1]
    (without the modulus, seeds above 2**63 / 1_000_003 ~ 9.2e12 overflowed); unchanged below that. 1_000_003
    is odd, so seed -> derived seed is a bijection of [0, 2**63): two seeds never share a stream."""
    return (int(seed) * 1_000_003 + int(salt)) % 2**63


def convert_batchnorm(method: nn.Module, cfg: TrainConfig, world: int, device_type: str) -> nn.Module:
    """The run's BatchNorm flavour: SplitBatchNorm with ``train.bn_splits > 1``; else SyncBatchNorm in a
    multi-process CUDA run with ``train.sync_bn``, except MoCo's key encoder with shuffle_bn, which keeps
    per-process statistics (shuffle-BN exists to make the key encoder's BN groups differ from the query
    encoder's; synchronised statistics would undo it). The momentum encoder stays frozen either way."""
    if cfg.train.bn_splits > 1:
        method = convert_split_batchnorm(method, cfg.train.bn_splits)
    elif world > 1 and device_type == "cuda" and cfg.train.sync_bn:
        if cfg.method.name == "mocov2" and cfg.method.shuffle_bn:
            method.online = nn.SyncBatchNorm.convert_sync_batchnorm(method.online)
        else:
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    target = getattr(method, "target", None)
    if target is not None:
        deactivate_requires_grad(target)
    return method


class Trainer:
    """One training run. ``Trainer(cfg, out_dir).run()`` trains and writes the run folder:

    * ``checkpoint.pt``: the latest checkpoint (every ``train.checkpoint_every`` epochs and at exit),
    * ``metrics.nc``: the probes Dataset (data contract, ``source = "measured"``),
    * ``config.toml``: the config, ``summary.json``: the :class:`TrainResult`.

    Args:
        cfg: the run's configuration.
        out_dir: the run folder (None: write nothing; for benchmarks).
        data_root: overrides ``cfg.data.root`` / $STOPGRAD_DATA.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun each process takes its local GPU).
        resume: continue from ``out_dir/checkpoint.pt``.
        data: an already loaded dataset (skips loading).
    """

    def __init__(self, cfg: TrainConfig, out_dir: str | os.PathLike | None, *, data_root=None, device: str = "auto",
                 resume: bool = False, data: ImageData | None = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.data_root = data_root
        self.device_arg = device
        self.resume = resume
        self.data = data
        self._setup_done = False
        self._lock: _FolderLock | None = None

    # ------------------------------------------------------------------------------------------------ setup
    def _check_folder(self) -> None:
        if self.out_dir is None:
            if self.resume:
                raise TrainingError("resume needs a run folder")
            return
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise TrainingError(f"--out {self.out_dir}: exists and is not a folder")
        if _starts_as_main():  # rank 0 writes the folder: it holds the lock for the whole run
            self._lock = _FolderLock(self.out_dir)
            self._lock.acquire()
        ckpt = self.out_dir / CHECKPOINT_NAME
        if self.resume and not ckpt.is_file():
            raise TrainingError(f"--resume: {self.out_dir} holds no {CHECKPOINT_NAME} to resume from")
        if not self.resume and ckpt.is_file():
            raise TrainingError(f"{self.out_dir} already holds a run ({CHECKPOINT_NAME}); "
                                "pass --resume to continue it, or choose another --out")
        others = [name for name in RUN_FILES if (self.out_dir / name).exists()]
        if not self.resume and others:
            raise TrainingError(f"{self.out_dir} holds another run's files ({', '.join(others)}) but no "
                                f"{CHECKPOINT_NAME}; remove them, or choose another --out")

    def setup(self) -> Trainer:
        """Check inputs, load data, build everything, restore a checkpoint if resuming."""
        if self._setup_done:
            return self
        cfg = self.cfg
        try:
            self._check_folder()
        except TrainingError:
            self._release_lock()
            raise
        ws_env = int(os.environ.get("WORLD_SIZE", "1"))
        if cfg.train.batch_size % ws_env:
            raise ConfigError("train.batch_size", cfg.train.batch_size,
                              f"must be divisible by the number of processes ({ws_env})")
        local, splits = cfg.train.batch_size // ws_env, cfg.train.bn_splits
        if local % splits or local // splits < 2:
            raise ConfigError("train.bn_splits", splits,
                              f"must divide each process's batch ({local} = train.batch_size {cfg.train.batch_size} "
                              f"/ {ws_env} processes) into groups of at least 2")
        self._owns_dist = ws_env > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized())
        self.dist = D.init_distributed(self.device_arg)
        self.device = dev = self.dist.device
        self.rank, self.world = self.dist.rank, self.dist.world_size
        self.local_batch = cfg.train.batch_size // self.world
        if self.data is None:
            self.data = load_image_data(cfg.data, self.data_root, min_train=cfg.train.batch_size, seed=cfg.train.seed)
        elif self.data.train_images.shape[0] < cfg.train.batch_size:
            raise TrainingError(f"train.batch_size = {cfg.train.batch_size} is larger than the training set "
                                f"({self.data.train_images.shape[0]} images)")
        data = self.data
        n_train = data.train_images.shape[0]
        self.steps_per_epoch = n_train // cfg.train.batch_size
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.stop_step = min(self.total_steps, cfg.train.max_steps) if cfg.train.max_steps else self.total_steps

        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
        prec = cfg.train.precision
        self.amp_dtype = torch.bfloat16 if (prec == "bf16" or (prec == "auto" and dev.type == "cuda")) else None
        self.param_dtype = param_dtype(prec)  # float64 with train.precision = "fp64", else float32
        torch.manual_seed(cfg.train.seed)  # the init is drawn in float32 whatever the precision (same start)
        method = convert_batchnorm(build_method(cfg), cfg, self.world, dev.type)
        method.to(dev, dtype=self.param_dtype)  # parameters and floating buffers (BN statistics, queue)
        # channels_last only on CUDA: on the CPU, torch's channels_last BatchNorm backward loses precision
        # (0.7% gradient error measured on a small convnet against float64; contiguous: 1e-5).
        self.channels_last = cfg.train.channels_last and dev.type == "cuda"
        if self.channels_last:
            method.to(memory_format=torch.channels_last)
        method.total_steps = self.total_steps
        method.generator = torch.Generator(device=dev)
        method.generator.manual_seed(derived_seed(cfg.train.seed, 2 + self.rank))
        self.method = method
        self.lr = cfg.effective_lr
        self.optimizer = build_optimizer(cfg.optim, method.param_groups(), self.lr)
        self.schedule = LRSchedule(cfg.optim, self.total_steps, self.steps_per_epoch, self.lr)

        self.train_images = data.train_images.to(dev)
        # the kNN monitor reads the bank and the test split from the device too (no copy of the train split)
        shared_bank = data.bank_images is data.train_images
        self.eval_data = replace(data, train_images=self.train_images, test_images=data.test_images.to(dev),
                                 bank_images=self.train_images if shared_bank else data.bank_images.to(dev),
                                 bank_labels=data.bank_labels)
        out_dtype = self.amp_dtype if (self.amp_dtype is not None and dev.type == "cuda") else self.param_dtype
        self.augment = GPUAugment(cfg.augment, data.image_size, data.mean, data.std, out_dtype=out_dtype,
                                  channels_last=self.channels_last)
        self.eval_transform = EvalTransform(self.augment.size, data.mean, data.std, out_dtype=self.param_dtype,
                                            channels_last=self.channels_last)
        self.aug_gen = torch.Generator(device=dev)
        self.aug_gen.manual_seed(derived_seed(cfg.train.seed, 1))
        self.probe = SpectralProbe(cfg.probe, self.steps_per_epoch, has_rule_fhat=method.fhat is not None,
                                   background=dev.type == "cuda")
        self.knn_history: list[tuple[int, float]] = []  # (step, accuracy), the same on every process
        self.step = 0
        self.train_seconds = 0.0
        self.last_loss = math.nan

        if self.resume:
            self._restore(load_checkpoint(self.out_dir / CHECKPOINT_NAME, map_location="cpu"))
        if cfg.train.compile and dev.type != "cuda":
            _log("train.compile is for CUDA runs; running eager on the CPU")
        if cfg.train.compile and dev.type == "cuda":
            for net in method.networks():
                if hasattr(net, "compile"):  # nn.Module.compile: torch >= 2.2
                    net.compile(mode=cfg.train.compile_mode)
            self.augment.compile(mode="default")
        if self.world > 1:
            ids = [dev.index] if dev.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(method, device_ids=ids)
        else:
            self.model = method
        if self.out_dir is not None and D.is_main():
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _write_text_atomic(self.out_dir / "config.toml", config_to_toml(cfg))
        self._setup_done = True
        return self

    # ------------------------------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        gens = [self.method.generator.get_state()]
        if self.world > 1:
            gathered = [None] * self.world
            torch.distributed.all_gather_object(gathered, gens[0])
            gens = gathered
        return {
            "format": 1,
            "config": config_to_dict(self.cfg),
            "step": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.world,
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "aug_rng": self.aug_gen.get_state(),
            "method_rng": gens,
            "torch_rng": torch.get_rng_state(),
            "probe": self.probe.state_dict(),
            "knn": [[int(s), float(a)] for s, a in self.knn_history],
            "train_seconds": self.train_seconds,
            "last_loss": float(self.last_loss),
        }

    def _restore(self, state: dict) -> None:
        saved = _flatten(state.get("config", {}))
        now = _flatten(config_to_dict(self.cfg))
        for key in sorted(set(saved) | set(now)):
            if key in RESUME_FREE or key.startswith(RESUME_FREE_TABLES):
                continue
            if saved.get(key) != now.get(key):
                raise TrainingError(f"--resume: the config differs from the checkpoint's at {key} "
                                    f"({saved.get(key)!r} there, {now.get(key)!r} now)")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise TrainingError(f"--resume: {state['steps_per_epoch']} steps per epoch in the checkpoint, "
                                f"{self.steps_per_epoch} now (different data?)")
        if state["world_size"] != self.world:
            _log(f"resuming a {state['world_size']}-process run with {self.world} processes "
                 "(not bitwise identical)")
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.aug_gen.set_state(state["aug_rng"].to(self.aug_gen.get_state().device))
        gens = state["method_rng"]
        if self.rank < len(gens):
            self.method.generator.set_state(gens[self.rank])
        torch.set_rng_state(state["torch_rng"])
        self.probe.load_state_dict(state["probe"], device=self.device)
        self.knn_history = [(int(s), float(a)) for s, a in state["knn"]]
        self.step = int(state["step"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.last_loss = float(state.get("last_loss", math.nan))
        _log(f"resumed {self.out_dir} at step {self.step} (epoch {self.step / self.steps_per_epoch:.2f})")

    def state_tensors(self):
        """(name, tensor) of the whole training state: the method's state_dict (weights, BN running
        statistics, EMA target, MoCo's queue), F-hat of a predictor rule and the optimizer's state."""
        yield from self.method.state_dict().items()
        if self.method.fhat is not None and self.method.fhat.F is not None:
            yield "F-hat of the predictor rule", self.method.fhat.F
        names = {id(p): n for n, p in self.method.named_parameters()}
        for param, st in self.optimizer.state.items():
            for key, value in st.items():
                yield f"optimizer {key} of {names.get(id(param), '?')}", value

    def check_state(self) -> None:
        """Stop with a TrainingError if any tensor of the training state (:meth:`state_tensors`) holds a
        NaN or an infinity, on any process (collective: every process stops at the same step)."""
        bad = first_nonfinite(self.state_tensors())
        what, value, where = (f"the training state ({bad[0]})", bad[1], "") if bad is not None else ("", 0.0, "")
        if self.world > 1:
            flags = D.gather_nograd(torch.tensor([float(bad is not None)], device=self.device))
            first = int(flags.argmax())
            if bool(flags[first] > 0) and bad is None:  # another process's state: it names the tensor
                what, value = "the training state", "non-finite"
            where = f" on process {first} of {self.world}"
            if not bool(flags[first] > 0):
                return
        elif bad is None:
            return
        self._nonfinite(value, where=where, what=what)

    def save(self) -> None:
        """Write the checkpoint and metrics.nc (rank 0; the other processes only join the gathers). The
        state is checked first: a non-finite one stops the run, so every checkpoint written is finite."""
        self.check_state()
        state = self._state()
        if self.out_dir is not None and D.is_main():
            save_checkpoint(state, self.out_dir / CHECKPOINT_NAME)
            self.write_metrics()

    def dataset(self):
        cfg = self.cfg
        attrs = {
            "dataset": cfg.data.name, "arch": cfg.encoder.arch, "batch_size": cfg.train.batch_size,
            "lr": self.lr, "weight_decay": cfg.optim.weight_decay,
            "predictor_lr": self.lr * cfg.optim.predictor_lr_ratio,
            "predictor_weight_decay": self._predictor_sgd_weight_decay(),
            "predictor_decay": cfg.optim.predictor_decay,
            "loss_scale": cfg.method.loss_scale,
            "sgd_momentum": cfg.optim.momentum, "optimizer": cfg.optim.name,
            **self._ema_attrs(),
            "predictor": cfg.predictor.kind, "steps_per_epoch": self.steps_per_epoch,
            "probe_every": cfg.probe.every, "probe_seconds": self.probe.time_spent,
            "probe_background_seconds": self.probe.worker_seconds,
            "probe_fraction": self.probe.time_spent / self.train_seconds if self.train_seconds else math.nan,
            "train_seconds": self.train_seconds, "world_size": self.world, "device": str(self.device),
            "seed": cfg.train.seed,
        }
        if self.method.rule is not None:
            attrs["predictor_rule"] = self.method.rule.name
        return self.probe.to_dataset(cfg.method.name, config_to_toml(cfg), attrs)

    def _predictor_sgd_weight_decay(self) -> float:
        """The predictor group's SGD weight decay at the peak lr (what ``analysis.to_flow`` expects)."""
        o = self.cfg.optim
        wd = o.weight_decay if o.predictor_weight_decay is None else o.predictor_weight_decay
        return wd / o.predictor_lr_ratio if o.predictor_decay == "flow" else wd

    def _ema_attrs(self) -> dict:
        """EMA attributes: ``ema_momentum`` only when it is constant; a cosine schedule is described by its
        ends (the per-probe ``ema_momentum`` variable holds the value at each probe)."""
        if not self.method_has_target():
            return {"ema_momentum": math.nan}
        m = self.cfg.method
        if m.momentum_schedule == "constant":
            return {"ema_momentum": m.momentum, "ema_momentum_schedule": "constant"}
        return {"ema_momentum": math.nan, "ema_momentum_schedule": m.momentum_schedule,
                "ema_momentum_start": m.momentum, "ema_momentum_final": m.momentum_final}

    def method_has_target(self) -> bool:
        return hasattr(self.method, "target") and getattr(self.method, "use_ema", True)

    def write_metrics(self) -> None:
        ds = self.dataset()
        if ds is not None and self.out_dir is not None:
            write_netcdf(ds, self.out_dir / "metrics.nc")

    # ---------------------------------------------------------------------------------------------- the step
    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation of the training set (same on every process), on the device."""
        g = torch.Generator().manual_seed(derived_seed(self.cfg.train.seed, 7919 * (epoch + 1)))
        return torch.randperm(self.train_images.shape[0], generator=g).to(self.device)

    def views(self, global_idx: torch.Tensor) -> list[torch.Tensor]:
        """The method's augmented views of this process's shard of the global batch ``global_idx``."""
        shard = slice(self.rank, None, self.world)
        x = self.train_images[global_idx[shard]]
        out = []
        for _ in range(self.method.n_views):
            params = self.augment.sample(global_idx.shape[0], self.aug_gen)
            if self.world > 1:
                params = params.select(shard)
            out.append(self.augment.apply(x, params))
        return out

    def train_step(self, global_idx: torch.Tensor) -> dict:
        """One optimizer step on the global batch ``global_idx`` (B,); returns the method's outputs."""
        step = self.step
        lr = self.schedule.apply(self.optimizer, step)
        views = self.views(global_idx)
        with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                            enabled=self.amp_dtype is not None):
            out = self.model(views)
        loss = out["loss"]
        if self.device.type == "cpu":
            self._check_finite_cpu(loss)
        self.probe.observe(out)
        if self.probe.due(step) and D.is_main():
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            mom = self.method.momentum_at(step) if self.method_has_target() else math.nan
            self.probe.record(step, out, self.local_batch, self.method.fhat.F if self.method.fhat else None,
                              self.method.predictor_matrix(), lr=lr, ema_momentum=mom)
        self.optimizer.zero_grad(set_to_none=True)
        scale = self.cfg.method.loss_scale
        (loss * scale if scale != 1.0 else loss).backward()
        self.optimizer.step()
        self.method.on_step_end(step)
        self.step += 1
        return out

    def _check_finite_cpu(self, loss: torch.Tensor) -> None:
        """On the CPU the loss is checked every step, before the backward pass. With several processes the
        losses are all-gathered first, so that every process stops at the same step (a process that
        stopped alone would leave the others waiting in DDP's gradient all-reduce)."""
        value = loss.detach().float().reshape(1)
        values = D.gather_nograd(value) if self.world > 1 else value
        if not bool(torch.isfinite(values).all()):
            bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
            where = f" on process {bad[0]} of {self.world}" if self.world > 1 else ""
            self._nonfinite(float(values[bad[0]]), where=where)

    def _nonfinite(self, value: float | str, where: str = "", what: str = "the loss") -> None:
        ckpt = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None else None
        if self.out_dir is not None and D.is_main():
            self.write_metrics()
        kept = (f"the last good checkpoint {ckpt} is kept" if ckpt is not None and ckpt.is_file()
                else "no checkpoint had been written yet")
        raise TrainingError(f"{what} became {value}{where} at step {self.step} (epoch {self.step / self.steps_per_epoch:.2f}); "
                            f"training stopped and {kept}. Lower optim.lr, or check the data and augmentation")

    # ---------------------------------------------------------------------------------------------- the loop
    def evaluate_knn(self) -> float:
        """The kNN monitor at the current step (computed on rank 0, broadcast, recorded on every process)."""
        acc = math.nan
        if D.is_main():
            acc = knn_monitor(self.method.backbone, self.eval_data, self.cfg.eval, self.eval_transform, self.device,
                              self.amp_dtype if self.device.type == "cuda" else None)
        if self.world > 1:
            t = torch.tensor([acc], dtype=torch.float64, device=self.device)
            D.broadcast_(t, src=0)
            acc = float(t[0])
        self.knn_history.append((self.step, acc))
        if D.is_main():
            self.probe.record_knn(self.step, acc)
        return acc

    def close(self) -> None:
        """Destroy the process group if this trainer created it, and release the run folder's lock."""
        if getattr(self, "_owns_dist", False):
            D.shutdown_distributed()
            self._owns_dist = False
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def run(self) -> TrainResult:
        """Train to ``train.epochs`` (or ``train.max_steps``), writing checkpoints and metrics; at the end
        (or when every process stops on a TrainingError) the process group the trainer created is destroyed."""
        try:
            self.setup()
            result = self._run()
        except TrainingError:
            self.close()  # all processes raise it at the same step (the checks are collective)
            raise
        except BaseException:
            self._release_lock()
            raise
        self.close()
        return result

    def _run(self) -> TrainResult:
        from tqdm.auto import tqdm

        cfg = self.cfg
        spe = self.steps_per_epoch
        log_every = cfg.train.log_every
        status = "finished" if self.stop_step == self.total_steps else "max_steps"
        bar = tqdm(total=self.stop_step, initial=self.step, unit="step", dynamic_ncols=True, mininterval=1.0,
                   disable=not (cfg.train.progress and D.is_main()), desc=f"{cfg.method.name}")
        if cfg.eval.knn_at_start and self.step == 0 and not self.knn_history:
            acc = self.evaluate_knn()
            if cfg.train.progress and self.rank == 0:
                bar.write(f"step 0: kNN accuracy {100 * acc:.2f}%")
        bad = None
        pending = 0
        halted = False
        with _StopRequest() as stop:
            while self.step < self.stop_step:
                epoch, pos = divmod(self.step, spe)
                order = self.epoch_order(epoch)
                t0 = time.perf_counter()
                while pos < spe and self.step < self.stop_step:
                    idx = order[pos * cfg.train.batch_size : (pos + 1) * cfg.train.batch_size]
                    out = self.train_step(idx)
                    pos += 1
                    pending += 1
                    if self.device.type != "cpu":
                        flag = ~torch.isfinite(out["loss"].detach())
                        bad = flag if bad is None else bad | flag
                    if pending >= log_every or pos == spe or self.step == self.stop_step:
                        self.last_loss = float(out["loss"].detach())
                        bar.update(pending)
                        bar.set_postfix(loss=f"{self.last_loss:.4f}", epoch=f"{self.step / spe:.2f}", refresh=False)
                        pending = 0
                        bad_any = bool(bad) if bad is not None else not math.isfinite(self.last_loss)
                        halt = stop.flag
                        if self.world > 1:
                            t = torch.tensor([float(bad_any), float(halt)], device=self.device)
                            torch.distributed.all_reduce(t)
                            bad_any, halt = bool(t[0] > 0), bool(t[1] > 0)
                        if bad_any:
                            self._nonfinite(self.last_loss)
                        self.check_state()  # the loss can stay finite while BN statistics overflow
                        bad = None
                        if halt:
                            halted = True
                            break
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.train_seconds += time.perf_counter() - t0
                if halted or (stop.flag and self.world == 1):
                    status = "interrupted"
                    break
                done_epoch = pos == spe
                last = self.step >= self.stop_step
                ke = cfg.eval.knn_every
                if done_epoch and ((ke and (epoch + 1) % ke == 0) or (last and status == "finished")):
                    acc = self.evaluate_knn()
                    if cfg.train.progress and self.rank == 0:
                        bar.write(f"epoch {epoch + 1}: kNN accuracy {100 * acc:.2f}%")
                ce = cfg.train.checkpoint_every
                if done_epoch and ce and (epoch + 1) % ce == 0 and not last:
                    self.save()
        bar.close()
        self.probe.flush()
        if status != "interrupted" and (not self.knn_history or self.knn_history[-1][0] != self.step):
            self.evaluate_knn()  # the reported kNN is always the final weights' (e.g. a max_steps stop mid-epoch)
        self.save()
        self.probe.close()
        result = self.result(status)
        if self.out_dir is not None and D.is_main():
            _write_text_atomic(self.out_dir / "summary.json", json.dumps(asdict(result), indent=2))
        if status == "interrupted":
            _log(f"interrupted at step {self.step}; checkpoint written, continue with --resume")
        return result

    def result(self, status: str) -> TrainResult:
        accs = [a for s, a in self.knn_history if s > 0]  # the step-0 baseline is reported as knn_start
        start = [a for s, a in self.knn_history if s == 0]
        ts = self.train_seconds
        return TrainResult(
            out_dir=str(self.out_dir) if self.out_dir is not None else "",
            steps=self.step,
            epochs=self.step / self.steps_per_epoch,
            status=status,
            final_loss=float(self.last_loss),
            knn_last=accs[-1] if accs else None,
            knn_best=max(accs) if accs else None,
            knn_start=start[-1] if start else None,
            train_seconds=ts,
            images_per_second=self.step * self.cfg.train.batch_size / ts if ts > 0 else math.nan,
            probe_seconds=self.probe.time_spent,
            probe_fraction=self.probe.time_spent / ts if ts > 0 else math.nan,
            device=str(self.device),
            world_size=self.world,
        )


def train(cfg: TrainConfig, out_dir, **kwargs) -> TrainResult:
    """``Trainer(cfg, out_dir, **kwargs).run()``."""
    return Trainer(cfg, out_dir, **kwargs).run()
