"""One process of the two-process gloo tests in test_train.py (not collected by pytest).

    RANK=r WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 PORTS=p1,p2,p3,p4 python ddp_worker.py OUT

OUT holds the scenario configs written by the test (``moco.toml``, ``simclr.toml``, ``shuffle.toml``,
``nan.toml``). Each scenario runs in its own process group (on its own port), and writes its result (or
``<name>.error.<rank>`` with the traceback) to OUT, so a failing scenario does not hide the others:

* ``moco``, ``simclr``: ``Trainer.run`` to ``train.max_steps`` in a process group this script created;
  rank 0 saves the method's state_dict to ``<name>.pt``;
* ``shuffle``: MoCo's key encoder on 16 fixed images (8 per process, interleaved), in train mode (per-process
  BN) with the global shuffle, without shuffle, and in eval mode; saved to ``shuffle.<rank>.pt``;
* ``nan`` (last, in a process group the trainer creates itself): rank 0's backbone input becomes NaN
  from step 2 on; each process records the error it ended with, how long that took and whether the process
  group was destroyed, in ``nan.<rank>.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from stopgrad.cmd_train import load_train_config
from stopgrad.ssl_models import MoCoV2, Trainer, TrainingError, synthetic_data

DATA_SIZE = 256


def _scenario(out: Path, name: str, rank: int, port: str, fn) -> None:
    os.environ["MASTER_PORT"] = port
    dist.init_process_group("gloo")
    try:
        fn()
    except Exception:  # recorded for the test; the next scenario still runs
        (out / f"{name}.error.{rank}").write_text(traceback.format_exc())
    finally:
        dist.destroy_process_group()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    data = synthetic_data(DATA_SIZE, 10, 32)
    ports = os.environ["PORTS"].split(",")

    def train(name):
        def fn():
            tr = Trainer(load_train_config(out / f"{name}.toml"), None, device="cpu", data=data)
            tr.run()
            if rank == 0:
                torch.save(tr.method.state_dict(), out / f"{name}.pt")
        return fn

    def shuffle():
        cfg = load_train_config(out / "shuffle.toml")
        torch.manual_seed(0)
        m = MoCoV2(cfg)
        m.generator = torch.Generator().manual_seed(100 + rank)  # rank 0's permutation is broadcast
        x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))[rank::2]
        res = {}
        m.eval()  # first, while the BN running statistics are still the same on both processes
        res["eval_shuffled"] = m.keys(x)
        with torch.no_grad():
            res["eval_unshuffled"] = F.normalize(m.target(x), dim=1)
        m.train()
        m.generator.manual_seed(100 + rank)
        res["shuffled"] = m.keys(x)
        with torch.no_grad():
            res["unshuffled"] = F.normalize(m.target(x), dim=1)
        torch.save(res, out / f"shuffle.{rank}.pt")

    for port, (name, fn) in zip(ports, (("moco", train("moco")), ("simclr", train("simclr")), ("shuffle", shuffle))):
        _scenario(out, name, rank, port, fn)

    os.environ["MASTER_PORT"] = ports[3]
    tr = Trainer(load_train_config(out / "nan.toml"), out / "nan", device="cpu", data=data).setup()

    def poison(module, args):
        if tr.step >= 2:
            return (args[0] * float("nan"),)

    if rank == 0:
        tr.method.backbone.register_forward_pre_hook(poison)
    t0 = time.perf_counter()
    try:
        tr.run()
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    record = {"error": error, "seconds": time.perf_counter() - t0, "step": tr.step,
              "group_destroyed": not dist.is_initialized(), "training_error": isinstance(error, str)
              and error.startswith(TrainingError.__name__ + ":")}
    (out / f"nan.{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
