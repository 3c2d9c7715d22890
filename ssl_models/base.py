"""Shared parts of every method: the online network, the predictor-rule hook, the method interface.

A method is an ``nn.Module`` whose ``forward(views)`` takes the list of augmented views (each (B, 3, S, S))
and returns a dict:

* ``loss``: the scalar to minimise (fp32),
* ``z``: (V*B, d) detached online projector outputs of the first two views (view 1 first), for F-hat and
  the probes,
* ``neg_dist`` (GSG only): the mean Euclidean distance of the negative pairs.

After the optimizer step the trainer calls ``on_step_end(step)`` (EMA target update, predictor rule).
Everything a method keeps besides parameters and buffers (F-hat) travels in its state_dict through
``get_extra_state``.
"""

from __future__ import annotations

import torch
from torch import nn

from stopgrad.dynamics import CorrelationEMA, PredictorRule

from .config import TrainConfig
from .distributed import gather_nograd
from .encoders import Encoder, build_encoder
from .heads import LinearPredictor, build_predictor, build_projector
from .precision import at_least_fp32

__all__ = ["SSLMethod", "SiameseNetwork", "build_online"]


class SiameseNetwork(nn.Module):
    """backbone -> projector (``encoder`` = Sequential(backbone, projector)) -> predictor.

    ``forward(x)`` returns (z, p): projector output and prediction (p = z without a predictor).
    """

    def __init__(self, backbone: Encoder, projector: nn.Module, predictor: nn.Module | None = None):
        super().__init__()
        self.encoder = nn.Sequential(backbone, projector)
        self.predictor = predictor if predictor is not None else nn.Identity()

    @property
    def backbone(self) -> Encoder:
        return self.encoder[0]

    @property
    def projector(self) -> nn.Module:
        return self.encoder[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        return z, self.predictor(z)


def build_online(cfg: TrainConfig, with_predictor: bool = True) -> SiameseNetwork:
    backbone = build_encoder(cfg.encoder)
    projector = build_projector(cfg.projector, backbone.feature_dim)
    predictor = build_predictor(cfg.predictor, cfg.projector.out_dim) if with_predictor else None
    return SiameseNetwork(backbone, projector, predictor)


class SSLMethod(nn.Module):
    """Base class. Subclasses build ``self.online`` and implement ``forward``.

    Attributes:
        n_views: augmented views per image the trainer must supply.
        generator: a torch.Generator on the training device for the method's own random draws (GSG's
            partner permutation, MoCo's batch shuffle); set by the trainer, checkpointed by it.
        total_steps: optimizer steps of the whole run (for momentum schedules); set by the trainer.
        rule, fhat: the predictor rule and its running correlation F-hat (None without a rule).
    """

    n_views = 2

    def __init__(self, cfg: TrainConfig):
        super().__init__()
        self.cfg = cfg
        self.generator: torch.Generator | None = None
        self.total_steps = 1
        self.rule: PredictorRule | None = cfg.predictor.predictor_rule()
        self.fhat: CorrelationEMA | None = (
            CorrelationEMA(cfg.predictor.rho, cfg.predictor.freq) if self.rule is not None else None
        )
        self.online: SiameseNetwork

    # -- parts -------------------------------------------------------------------------------------------
    @property
    def backbone(self) -> Encoder:
        return self.online.backbone

    @property
    def predictor(self) -> nn.Module:
        return self.online.predictor

    def predictor_matrix(self) -> torch.Tensor | None:
        """W_p (d, d) for a linear predictor, else None."""
        pred = self.online.predictor
        return pred.matrix().detach() if isinstance(pred, LinearPredictor) else None

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters: ``trunk`` (backbone + projector) and ``predictor``."""
        return {
            "trunk": [p for p in self.online.encoder.parameters() if p.requires_grad],
            "predictor": [p for p in self.online.predictor.parameters() if p.requires_grad],
        }

    def networks(self) -> list[nn.Module]:
        """Modules worth compiling (online network, target encoder)."""
        return [self.online]

    def _rand_generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device != device:
            g = torch.Generator(device=device)
            g.manual_seed(int(torch.randint(0, 2**62, (1,))))
            self.generator = g
        return self.generator

    # -- predictor rule ------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, *zs: torch.Tensor) -> None:
        """Add the online projector outputs of this step to F-hat (all processes' samples)."""
        if self.fhat is not None:
            f = gather_nograd(at_least_fp32(torch.cat([z.detach() for z in zs])))
            self.fhat.update(f)

    @torch.no_grad()
    def apply_rule(self, step: int) -> bool:
        """Overwrite the linear predictor with rule(F-hat) if due at ``step``; True if it did."""
        if self.fhat is None or self.fhat.F is None or not self.fhat.due(step):
            return False
        W = self.rule(self.fhat.F)
        self.online.predictor.set_matrix(W)
        return True

    def on_step_end(self, step: int) -> None:
        """Called after the optimizer step ``step`` (0-based)."""
        self.apply_rule(step)

    def get_extra_state(self):
        return {"fhat": self.fhat.state_dict() if self.fhat is not None else None}

    def set_extra_state(self, state) -> None:
        if self.fhat is not None and state and state.get("fhat") is not None:
            st = dict(state["fhat"])
            if st.get("F") is not None:  # a checkpoint is loaded on the CPU; F-hat lives with the parameters
                st["F"] = st["F"].to(next(self.parameters()).device)
            self.fhat.load_state_dict(st)

    def _stop(self, z: torch.Tensor) -> torch.Tensor:
        """The stop-gradient on a target computed by the online network (removed by the ablation)."""
        return z.detach() if self.cfg.method.stop_gradient else z
