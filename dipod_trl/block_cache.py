"""A KV cache of the tokens outside the active block, for block-wise diffusion sampling (Fast-dLLM's idea).

In block-wise sampling only the active block changes between steps. At each refresh (the block's first step, then
every `refresh_every` steps) one forward over the whole canvas gives the step's logits and the keys/values of every
position; the following steps feed only the block (`"dual"`: prompt, earlier and later blocks all cached) or the
block and everything after it (`"prefix"`). With bidirectional attention the cached states are those of the canvas
at the refresh, so this is an approximation: it is exact only for a one-layer model (tested) and the sampler keeps
it off by default. Works with the native LLaDA/Dream classes, whose forward takes transformers' `DynamicCache`.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers import DynamicCache

from .models import DiffusionLM, positions_from_mask

KV_CACHE_MODES = ("none", "prefix", "dual")


class BlockCache:
    """Logits of the active block from a cached forward; `block_logits` decides when to refresh."""

    def __init__(self, model: nn.Module, adapter: DiffusionLM, attention_mask: torch.Tensor, mode: str,
                 refresh_every: int = 0):
        if mode not in ("prefix", "dual"):
            raise ValueError(f"kv_cache must be one of {KV_CACHE_MODES}, got {mode!r}.")
        if not adapter.kv_cache:
            raise ValueError("kv_cache needs a model with a bidirectional KV cache (the native LLaDA/Dream classes); "
                             "use kv_cache='none' for this model.")
        self.model, self.adapter, self.mode, self.refresh_every = model, adapter, mode, refresh_every
        self.shift = 1 if adapter.shifted_logits else 0
        self.use_mask = not adapter.attend_to_padding and not bool(attention_mask.all())
        self.attention_mask = attention_mask
        if adapter.positions_from_mask and self.use_mask:
            self.positions = positions_from_mask(attention_mask)
        else:
            self.positions = torch.arange(attention_mask.size(1), device=attention_mask.device).expand_as(
                attention_mask)
        params = inspect.signature(model.forward).parameters
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.kv_mask: torch.Tensor | None = None

    def block_logits(self, x: torch.Tensor, start: int, end: int, step: int) -> torch.Tensor:
        """Logits `(B, end - start, V)` predicting the block's tokens (Dream's shift undone)."""
        if step == 0 or (self.refresh_every > 0 and step % self.refresh_every == 0) or not self.kv:
            return self._refresh(x, start, end)
        return self._cached(x, start, end)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, **extra):
        kwargs = {"attention_mask": mask} if self.use_mask else {}
        return self.model(input_ids=ids, position_ids=positions, logits_to_keep=keep, use_cache=True, **kwargs,
                          **extra)

    def _refresh(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        q0 = start - self.shift  # raw positions q0 .. q0 + block - 1 predict the block's tokens
        keep = torch.zeros_like(x, dtype=torch.bool)
        keep[:, q0:q0 + end - start] = True
        out = self._forward(x, self.attention_mask, self.positions, keep)
        cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        states = [(layer.keys, layer.values) for layer in cache.layers]
        if self.mode == "prefix":
            self.kv = [(k[:, :, :q0], v[:, :, :q0]) for k, v in states]
            self.kv_mask = self.attention_mask[:, :q0]
        else:  # attention is bidirectional, so the order of cached positions does not matter (RoPE is applied)
            self.kv = [(torch.cat([k[:, :, :q0], k[:, :, end:]], 2), torch.cat([v[:, :, :q0], v[:, :, end:]], 2))
                       for k, v in states]
            self.kv_mask = torch.cat([self.attention_mask[:, :q0], self.attention_mask[:, end:]], 1)
        return out.logits.view(x.size(0), end - start, -1)

    def _cached(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        q0 = start - self.shift
        q1 = x.size(1) if self.mode == "prefix" else end
        keep = torch.zeros(x.size(0), q1 - q0, dtype=torch.bool, device=x.device)
        keep[:, : end - start] = True
        mask = torch.cat([self.kv_mask, self.attention_mask[:, q0:q1]], 1)
        cache = DynamicCache(ddp_cache_data=self.kv)
        out = self._forward(x[:, q0:q1], mask, self.positions[:, q0:q1], keep, **{self.cache_kwarg: cache})
        return out.logits.view(x.size(0), end - start, -1)
