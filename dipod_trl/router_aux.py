"""The MoE load-balancing loss (TRL's `router_aux_loss_coef` term) of the likelihood forwards, for any attention.

transformers computes `aux_loss` inside an MoE model's forward from a 2-D padding mask only, and only with
`output_router_logits=True`. The likelihood calls models with 4-D block masks, with no mask at all (LLaDA's
attend-to-padding convention) or with the lm-head restricted to a few positions, so instead the router logits are
recorded by hooks on the router modules transformers itself records (`_can_record_outputs["router_logits"]`), and
transformers' own `load_balancing_loss_func` is applied over the real tokens of each forward. This works the same
for full-attention (bidirectional) and block-causal MoE models; dense models record nothing.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
from torch import nn

from .families.base import unwrap

_COLLECTED: contextvars.ContextVar[list | None] = contextvars.ContextVar("router_aux", default=None)


@contextlib.contextmanager
def router_aux_losses(enabled: bool = True):
    """Collect the load-balancing loss of every likelihood forward run inside (a list of scalars; empty when the
    model has no router the hooks can find, or when not `enabled`: then no hook is registered at all)."""
    collected: list[torch.Tensor] = []
    token = _COLLECTED.set(collected if enabled else None)
    try:
        yield collected
    finally:
        _COLLECTED.reset(token)


def router_modules(model: nn.Module) -> tuple[list[nn.Module], int]:
    """The router modules of an MoE model (wrappers looked through) and the output index of their logits; an empty
    list for dense models."""
    inner = unwrap(model)
    recorder = getattr(getattr(inner, "model", None), "_can_record_outputs", None) or {}
    spec = recorder.get("router_logits")
    target = getattr(spec, "target_class", None) if spec else None
    if target is None:
        return [], 0
    return [m for m in inner.modules() if isinstance(m, target)], getattr(spec, "index", 0)


@contextlib.contextmanager
def recording(model: nn.Module, token_mask: torch.Tensor | None, reference: torch.Tensor):
    """Around one forward of `model` inside `router_aux_losses()`: record its router logits and append the
    load-balancing loss over `token_mask (B, L)` (all of `reference`'s positions when None). Does nothing outside
    `router_aux_losses()` or for dense models."""
    collected = _COLLECTED.get()
    routers, index = router_modules(model) if collected is not None else ([], 0)
    if not routers:
        yield
        return
    captured: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: captured.append(out[index] if isinstance(out, tuple)
                                                                           else out)) for m in routers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if captured:
        collected.append(load_balancing_loss(captured, unwrap(model).config, token_mask, reference))


def load_balancing_loss(router_logits: list[torch.Tensor], config, token_mask: torch.Tensor | None,
                        reference: torch.Tensor) -> torch.Tensor:
    """transformers' Switch-style load-balancing loss of one forward's router logits (one `(B*L, E)` tensor per MoE
    layer) over the real tokens."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    config = config.get_text_config()
    experts = getattr(config, "num_experts", None) or config.n_routed_experts
    mask = torch.ones_like(reference, dtype=torch.long) if token_mask is None else token_mask.long()
    return load_balancing_loss_func(tuple(router_logits), experts, config.num_experts_per_tok,
                                    mask.to(router_logits[0].device))
