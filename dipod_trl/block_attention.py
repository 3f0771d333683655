"""Block-diffusion attention: the one home of block structure (block ids, block-causal and training masks).

A block-diffusion LM (SDAR, LLaDA2) cuts every row into blocks of `block_size` positions, counted from the row's
first real token (`block = position_id // block_size`, as the models' own `generate()` does: a prompt whose length
is not a multiple of the block size shares its last block with the first completion tokens). Attention is
bidirectional inside a block and causal across blocks. Masks here are boolean `(B, 1, Q, K)`, True where query `q`
may attend to key `k`; `additive` turns them into the float masks transformers' attention adds to its scores.

The likelihood's one-forward layout (`diffusion_layout`) is `[prefix ; noised copy ; clean copy]` of a row: the
prefix holds the blocks before the first scored block once, and both copies hold the blocks from there on. A noised
block sees the prefix and clean blocks before it and itself; the clean copy is block-causal; positions repeat.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

ATTENTION_PATTERNS = ("full", "block_causal", "encoder_decoder")


def positions_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting from each row's first real token (0 on left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def block_causal_mask(position_ids: torch.Tensor, valid: torch.Tensor, block_size: int,
                      queries: slice | None = None) -> torch.Tensor:
    """`(B, 1, Q, L)`: query `i` sees real key `j` iff `block(j) <= block(i)`; a pad query sees only itself.

    `queries` (default: all `L` columns) keeps only those query rows, built directly: a cached forward over the
    last columns needs their rows only."""
    queries = queries or slice(0, position_ids.size(1))
    block = position_ids // block_size
    allowed = (block.unsqueeze(1) <= block[:, queries].unsqueeze(2)) & valid.bool().unsqueeze(1)
    eye = torch.arange(position_ids.size(1), device=block.device)[queries].unsqueeze(1) == torch.arange(
        position_ids.size(1), device=block.device).unsqueeze(0)
    pad_query = ~valid.bool()[:, queries].unsqueeze(-1)
    return torch.where(pad_query, eye.unsqueeze(0), allowed).unsqueeze(1)


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean mask -> float mask in `dtype`: 0 where allowed, the dtype's minimum elsewhere."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def _pads_see_themselves(allowed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Give every invalid query only its own key, so no attention row is empty (SDPA would return NaN)."""
    eye = torch.eye(allowed.size(-1), dtype=torch.bool, device=allowed.device)
    pad_query = ~valid.bool().unsqueeze(-1)
    return torch.where(pad_query, eye.unsqueeze(0), allowed)


class DiffusionLayout(NamedTuple):
    """One forward over every block of a batch: `[prefix (P) ; noised copy (D) ; clean copy (D)]` per row."""

    input_ids: torch.Tensor  # (B, P + 2D) with the noised copy still clean (`noised` places the mask tokens)
    position_ids: torch.Tensor  # (B, P + 2D)
    mask: torch.Tensor  # (B, 1, P + 2D, P + 2D) boolean
    start: int  # first column of the noised copy (= P)
    span: int  # D: columns of each copy; copy column d is input column `P - tail + d`
    valid: torch.Tensor  # (B, P + 2D) boolean: the real tokens of each region

    def noised(self, completion_noise: torch.Tensor, mask_token_id: int) -> torch.Tensor:
        """The layout's ids with completion positions `completion_noise (N, B, C)` masked: `(N * B, P + 2D)`."""
        n, b, c = completion_noise.shape
        ids = self.input_ids.unsqueeze(0).repeat(n, 1, 1)
        end = self.start + self.span
        ids[:, :, end - c:end] = ids[:, :, end - c:end].masked_fill(completion_noise, mask_token_id)
        return ids.view(n * b, -1)


def diffusion_layout(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_length: int, block_size: int
) -> DiffusionLayout:
    """The block-diffusion training view of left-padded `[prompt ; completion]` rows (`completion_length` columns).

    Copies start `tail` columns before the completion, `tail` the most prompt tokens any row shares with its first
    completion block (`< block_size`); in each row, columns before its own first completion block belong to the
    prefix and the rest to the copies (the other region marks them invalid).
    """
    b, total = input_ids.shape
    c = completion_length
    p = total - c
    valid = attention_mask.bool()
    positions = positions_of(attention_mask)
    block = positions // block_size
    first_block = block[:, p:p + 1] if c > 0 else block[:, -1:]  # (B, 1): block of the first completion token
    prompt_len = valid[:, :p].sum(1)
    tail = int((prompt_len % block_size).max()) if b else 0
    in_copy = (block >= first_block) & valid  # this row's columns from its first completion block on
    in_copy[:, : p - tail] = False  # (blocks before the first completion block are whole prompt blocks)
    cols = slice(p - tail, total)
    span = total - (p - tail)
    ids = torch.cat([input_ids[:, :p], input_ids[:, cols], input_ids[:, cols]], 1)
    pos = torch.cat([positions[:, :p], positions[:, cols], positions[:, cols]], 1)
    blk = torch.cat([block[:, :p], block[:, cols], block[:, cols]], 1)
    region = torch.cat([torch.zeros(b, p, dtype=torch.long), torch.ones(b, span, dtype=torch.long),
                        torch.full((b, span), 2, dtype=torch.long)], 1).to(input_ids.device)
    ok = torch.cat([valid[:, :p] & ~in_copy[:, :p], in_copy[:, cols], in_copy[:, cols]], 1)
    q_blk, k_blk = blk.unsqueeze(2), blk.unsqueeze(1)
    q_reg, k_reg = region.unsqueeze(2), region.unsqueeze(1)
    k_context = k_reg != 1  # prefix or clean copy
    allowed = torch.where(
        q_reg == 1,
        (k_context & (k_blk < q_blk)) | ((k_reg == 1) & (k_blk == q_blk)),  # noised block: clean past and itself
        k_context & (k_blk <= q_blk) & ((q_reg == 2) | (k_reg == 0)),  # prefix / clean copy: block-causal
    ) & ok.unsqueeze(1)
    mask = _pads_see_themselves(allowed, ok).unsqueeze(1)
    return DiffusionLayout(ids, pos, mask, p, span, ok)
