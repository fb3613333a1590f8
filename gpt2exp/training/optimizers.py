"""The optimizers (`optimizer.name`): AdamW, or Muon for the blocks' weight matrices with AdamW
for the rest (embeddings, head, norms, biases), as modded-nanogpt splits them."""

from typing import Any

import torch
from torch import nn

from gpt2exp.config import OptimizerConfig

ParamGroup = dict[str, Any]


def make_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """`cfg.name`'s optimizer over `model`'s trainable parameters: AdamW (`adamw_groups`), or
    `MuonAdamW` with the blocks' Linear weights under Muon (`cfg.muon_*`) and the rest under AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "adamw":
        return _adamw(adamw_groups(params, cfg), params, cfg)
    hidden = {id(module.weight) for name, module in model.named_modules()
              if isinstance(module, nn.Linear) and name.startswith("blocks.")}
    matrices = [p for p in params if id(p) in hidden]
    rest = [p for p in params if id(p) not in hidden]
    muon = torch.optim.Muon([{"params": matrices}], lr=cfg.muon_lr, weight_decay=cfg.muon_weight_decay,
                            momentum=cfg.muon_momentum)
    return MuonAdamW(muon, _adamw(adamw_groups(rest, cfg), rest, cfg))


def adamw_groups(params: list[nn.Parameter], cfg: OptimizerConfig) -> list[ParamGroup]:
    """Two groups, matrices (weight decay `cfg.weight_decay`) and the rest (biases, norms: none, or
    the same with `weight_decay_on: all`), so that a run may resume with the other choice."""
    rest_decay = cfg.weight_decay if cfg.weight_decay_on == "all" else 0.0
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": rest_decay}]


def _adamw(groups: list[ParamGroup], params: list[nn.Parameter], cfg: OptimizerConfig) -> torch.optim.AdamW:
    """PyTorch's fused AdamW kernel (one pass over all parameters) on the CPU and CUDA."""
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    beta1, beta2 = cfg.betas
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(beta1, beta2), eps=cfg.eps, fused=fused)


class MuonAdamW(torch.optim.Optimizer):
    """Muon's groups and AdamW's groups as one optimizer: one list of parameter groups (each
    tagged "optimizer": muon or adamw) and one state, shared with the two it steps, so that the
    training loop's learning-rate schedule, the gradient scaler and the checkpoint (one state dict,
    both optimizers' moments) treat it as any other."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        for name, inner in (("muon", muon), ("adamw", adamw)):
            for group in inner.param_groups:
                group["optimizer"] = name
        self.muon, self.adamw = muon, adamw
        super().__init__([*muon.param_groups, *adamw.param_groups], defaults={})
        self._share()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "muon" in self.__dict__:  # load_state_dict: new groups and state, shared again
            self._share()

    def _share(self) -> None:
        for name, inner in (("muon", self.muon), ("adamw", self.adamw)):
            inner.param_groups = [group for group in self.param_groups if group["optimizer"] == name]
            inner.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        """One step of each (no closure: the loop computes the loss)."""
        if closure is not None:
            raise ValueError("MuonAdamW.step takes no closure")
        self.muon.step()
        self.adamw.step()
