"""``stopgrad train CONFIG --out DIR`` and ``stopgrad evaluate DIR``: real SSL runs (stopgrad.ssl_models).

Multi-GPU: ``torchrun --nproc_per_node=N -m stopgrad.cli train CONFIG --out DIR`` (DDP; only rank 0 writes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from stopgrad.config import apply_overrides, build, load_toml
from stopgrad.dynamics import ConfigError

__all__ = ["load_train_config", "register"]


def load_train_config(path: str | Path, overrides: list[str] | None = None):
    """Read a training TOML config (plus ``key.sub=value`` overrides) into a validated TrainConfig."""
    from stopgrad.ssl_models import TrainConfig

    table = load_toml(path)
    train = table.get("train")
    if isinstance(train, dict) and "fuse_views" in train:  # a removed key, in config.toml of older run folders
        if train["fuse_views"] is not False:
            raise ConfigError("train.fuse_views", train["fuse_views"], "was removed (it was never implemented); "
                              "delete the key")
        del train["fuse_views"]
    apply_overrides(table, overrides)
    return build(TrainConfig, table)


def _plan(cfg, args, device: str) -> str:
    """One line saying what is about to run (a truncated but valid config shows here what it does)."""
    t = cfg.train
    steps = f", at most {t.max_steps} steps" if t.max_steps else ""
    data = cfg.data.name + (f"[:{cfg.data.train_subset}]" if cfg.data.train_subset else "")
    return (f"stopgrad: train {cfg.method.name}, {cfg.encoder.arch} on {data}, {t.epochs} epoch(s) of batch "
            f"{t.batch_size}{steps}, {cfg.optim.name} lr {cfg.effective_lr:g}, seed {t.seed}, device {device}"
            f"{' (resume)' if args.resume else ''} -> {args.out}")


def _train(args: argparse.Namespace) -> int:
    from stopgrad.ssl_models import Trainer

    from .guards import check_device, check_fits, check_output, train_memory

    cfg = load_train_config(args.config, args.set)
    check_output(args.out, inputs=[args.config], kind="dir")
    device = check_device(args.device)
    need, detail = train_memory(cfg)
    side = cfg.augment.crop_size or cfg.data.image_size or 32
    check_fits(need, detail, "train.batch_size, augment.crop_size", f"{cfg.train.batch_size}, {side}")
    print(_plan(cfg, args, device), flush=True)  # stdout: stderr is for the one-line error
    if args.dry_run:
        print(f"dry run: config, --out, --device and the memory estimate ({detail}) are fine; nothing was run")
        return 0
    trainer = Trainer(cfg, args.out, data_root=args.data_root, device=device, resume=args.resume)
    result = trainer.run()  # destroys the process group it created (torchrun) when training ends
    if trainer.rank == 0:
        knn = "n/a" if result.knn_last is None else f"{100 * result.knn_last:.2f}% (best {100 * result.knn_best:.2f}%)"
        if result.knn_start is not None:
            knn += f", {100 * result.knn_start:.2f}% at step 0"
        print(f"{result.status}: {result.steps} steps ({result.epochs:.2f} epochs) on {result.device}"
              f"{' x' + str(result.world_size) if result.world_size > 1 else ''}\n"
              f"  final loss        {result.final_loss:.4f}\n"
              f"  kNN accuracy      {knn}\n"
              f"  throughput        {result.images_per_second:.1f} images/s ({result.train_seconds:.1f} s training)\n"
              f"  probe overhead    {100 * result.probe_fraction:.2f}% of training time\n"
              f"  run folder        {args.out} (checkpoint.pt, metrics.nc, config.toml, summary.json)")
    return 130 if result.status == "interrupted" else 0


def _evaluate(args: argparse.Namespace) -> int:
    from stopgrad.ssl_models import TrainingError, evaluate_run

    run = Path(args.dir)
    if not (run / "config.toml").is_file():
        raise TrainingError(f"{run}: no config.toml; is this a `stopgrad train` run folder?")
    from .guards import check_device

    device = check_device(args.device)
    cfg = load_train_config(run / "config.toml", args.set)
    res = evaluate_run(cfg, run, data_root=args.data_root, device=device, linear=not args.knn_only)
    rows = [("kNN accuracy", f"{100 * res['knn_acc']:.2f}%  (k={res['knn_k']}, T={res['knn_temperature']:g})")]
    if "knn_monitor_best" in res:
        rows.append(("kNN monitor", f"last {100 * res['knn_monitor_last']:.2f}%, best {100 * res['knn_monitor_best']:.2f}%"
                                    + (f", {100 * res['knn_monitor_start']:.2f}% at step 0"
                                       if "knn_monitor_start" in res else "")))
    if "linear_test_acc" in res:
        rows.append(("linear probe", f"{100 * res['linear_test_acc']:.2f}% test, {100 * res['linear_train_acc']:.2f}% "
                                     f"train ({res['linear_epochs']} epochs)"))
    rows.append(("dataset", f"{res['dataset']} ({res['data_source']})"))
    rows.append(("written", str(run / "eval.json")))
    width = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a real SSL model (checkpoints, probes in DIR/metrics.nc)",
        description="Train SimSiam/BYOL/GSG/DirectPred/SimCLR/MoCo v2 from a TOML config. "
                    "Multi-GPU: torchrun --nproc_per_node=N -m stopgrad.cli train CONFIG --out DIR.")
    p.add_argument("config", help="TOML config (see configs/*.toml)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoint.pt, metrics.nc, ...)")
    p.add_argument("--resume", action="store_true", help="continue the run in DIR from its checkpoint")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, --out, --device and the memory estimate, print the plan, and stop")
    p.add_argument("--data-root", metavar="PATH", default=None,
                   help="data folder (default: data.root in the config, else $STOPGRAD_DATA)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config value, e.g. --set train.epochs=1 (repeatable)")
    p.set_defaults(func=_train)

    e = subparsers.add_parser("evaluate", help="kNN and linear probe of a trained run",
                              description="Evaluate the run in DIR: weighted kNN (k=200, T=0.1) and a linear "
                                          "probe on frozen backbone features; writes DIR/eval.json.")
    e.add_argument("dir", metavar="DIR", help="a run folder written by `stopgrad train`")
    e.add_argument("--data-root", metavar="PATH", default=None)
    e.add_argument("--device", default="auto")
    e.add_argument("--knn-only", action="store_true", help="skip the linear probe")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override an eval setting, e.g. --set eval.linear_epochs=20")
    e.set_defaults(func=_evaluate)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run through the stopgrad command")
