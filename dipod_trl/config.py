"""`DiPODConfig`: `GRPOConfig` plus the knobs of diffusion sampling, likelihood estimation and the DiPOD term."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from trl import GRPOConfig

from .estimators import MASKINGS
from .grpo_contract import ESTIMATORS, check_contract
from .likelihood import AFTER_EOS
from .sampler import default_block_length
from .uniform_likelihood import ESTIMATORS as UNIFORM_ESTIMATORS
from .uniform_likelihood import SELF_CONDITIONING

LIKELIHOOD_ESTIMATORS = ESTIMATORS
REMASKING = ("low_confidence", "random")
NORMALIZATIONS = ("sequence", "token")
MASK_REDRAW = ("fixed", "per_iteration")
SEQUENCE_AGGREGATIONS = ("mean", "length")
TRL_DEFAULT_LOSS_TYPE = next(f.default for f in dataclasses.fields(GRPOConfig) if f.name == "loss_type")


@dataclass
class DiPODConfig(GRPOConfig):
    r"""
    Configuration class for [`DiPODTrainer`]: RL post-training of masked diffusion language models with DiPOD.

    Every [`trl.GRPOConfig`] field is honoured, mapped to its diffusion-LM meaning, or refused at start-up with a
    message naming it and the alternative, per `likelihood_estimator` (`dipod_trl.grpo_contract`; the README's
    table "GRPOConfig, field by field"). The fields below are added.

    Parameters:
        > Likelihood estimation (the proxy for the intractable log-likelihood)

        likelihood_estimator (`str`, *optional*, defaults to `"elbo"`):
            `"elbo"`: FPO, PPO-clip on the per-sequence ratio `exp(ELBO_new - ELBO_old)` of the Monte-Carlo
            masked-diffusion ELBO. `"one_step"`: diffu-GRPO, per-token log-probs from one forward with the completion
            fully masked and prompt tokens masked with probability `p_mask_prompt`; trained with TRL's token-level
            `loss_type`. `"spg"`: SPG's sandwich, the ELBO for positive-advantage sequences and a mix of an upper
            bound (EUBO) and the ELBO for negative ones.
        loss_type (`str` or `None`, *optional*, defaults to `None`):
            TRL's field, with its default made `None` so that an unset value can keep each estimator's published
            rule. `one_step`: TRL's token-level loss (`None` is TRL's default, `"dapo"`). `elbo`/`spg`: how the
            per-sequence losses, their KL and the DiPOD term are aggregated, exactly as TRL aggregates a
            sequence-level loss (`losses.sequence_weights`): `"grpo"`, `"bnpo"`, `"dr_grpo"`, `"dapo"` or
            `"luspo"`; `None` keeps `sequence_aggregation`. `"cispo"`, `"sapo"` and `"vespo"` replace PPO-clip with
            another objective and are refused there.
        elbo_samples (`int`, *optional*, defaults to `4`):
            Monte-Carlo samples (number of masked tokens and mask pattern) per sequence for the ELBO.
        elbo_batch_size (`int` or `None`, *optional*, defaults to `None`):
            Forward at most this many masked copies at once when estimating the ELBO. `None` chooses from the batch:
            one Monte-Carlo sample of every sequence per forward (`elbo_samples` forwards of `batch` rows).
        dipod_elbo_samples (`int`, *optional*, defaults to `1`):
            `one_step` only: Monte-Carlo samples of the DiPOD term's ELBO, its only extra forward (the other
            estimators reuse the policy loss's ELBO and `elbo_samples`). More samples lower its variance at a
            proportional cost; `make bench` reports both.
        elbo_masking (`str`, *optional*, defaults to `"uniform"`):
            How the ELBO's `elbo_samples` masked copies are drawn (`dipod_trl.estimators`): `"uniform"` (plain Monte
            Carlo, `k ~ U{1..L}`), the variance-reduced `"stratified"` (one noise level per stratum, unbiased),
            `"antithetic"` (complementary mask pairs, unbiased) and `"quadrature"` (Gauss-Legendre noise levels,
            GDPO's semi-deterministic MC; exact in the noise level for `2 * elbo_samples >= L`, else slightly
            biased), or SPG's `"block_random"` (a random completion block partly masked, later blocks masked,
            earlier blocks and the prompt masked at rate `p_mask_prompt`). Old, reference and current estimates
            always share the masks.
        mask_redraw (`str`, *optional*, defaults to `"fixed"`):
            `"fixed"`: one set of masks per rollout for all `num_iterations`. `"per_iteration"` (SPG's and d1's
            release): fresh masks (and one_step prompt masks) at every inner iteration; the old and reference
            estimates are then computed at generation for every iteration's masks, so each iteration's ratio is
            exactly 1 at the old parameters.
        sequence_aggregation (`str`, *optional*, defaults to `"mean"`):
            How per-sequence ELBO losses (FPO, SPG, the DiPOD term) are averaged: `"mean"` over sequences, or
            `"length"`-weighted, `sum_b L_b * loss_b / sum_b L_b` (SPG's release). Used when `loss_type` is `None`.
        score_eos (`bool`, *optional*, defaults to `True`):
            Whether the completion's first EOS token is scored by the likelihood estimates (the FPO and d1 releases
            do not score it; SPG does).
        after_eos (`str`, *optional*, defaults to `"hidden"`):
            What the likelihood's forward sees after the first EOS (and at an unscored EOS): `"hidden"` (attention-
            masked padding; models that ignore attention masks, like LLaDA, see pad tokens), `"visible"` (EOS
            tokens, attended: the FPO release) or `"masked"` (mask tokens: SPG's release).
        p_mask_prompt (`float`, *optional*, defaults to `0.15`):
            `one_step`: probability of masking each prompt token. `elbo_masking="block_random"`: the rate at which
            the prompt and the earlier, clean completion blocks are masked.
        spg_omega (`float`, *optional*, defaults to `0.5`):
            `spg` only: weight of the upper bound in the negative-advantage mix `omega * EUBO + (1 - omega) * ELBO`.
        spg_eubo_beta (`float`, *optional*, defaults to `1.0`):
            `spg` only: Renyi order of the upper bound; must be positive.
        normalization (`str`, *optional*, defaults to `"sequence"`):
            How ELBO-based terms are normalised. `"sequence"` (the paper's FPO code): the ELBO of a sequence is summed
            over its tokens, ratios are `exp` of that difference, and losses are averaged over sequences.
            `"token"`: the ELBO is divided by the number of completion tokens first (a per-token average), which
            keeps the ratio and the DiPOD term on the scale of one token whatever the completion length.

        > DiPOD: self-distillation on the policy's own completions

        dipod_beta (`float`, *optional*, defaults to `0.05`):
            Weight of the DiPOD term `dipod_beta * (-ELBO_theta(on-policy completions))` added to every estimator's
            loss. `0.0` disables it exactly (and skips any extra forward it would need).

        > Uniform-noise models (DiffusionGemma: no mask token, corrupted positions hold random tokens)

        uniform_likelihood (`str`, *optional*, defaults to `"training"`):
            The likelihood FPO, SPG and the DiPOD term use: `"training"`, the model's own training objective (TRL's
            SFT recipe: `log p(x_i | corrupted canvas)` at every canvas position under uniform corruption at
            `t ~ U(eps, 1 - eps)`), or `"elbo"`, the exact continuous-time uniform-state ELBO (UDLM / Duo, with
            `alpha_t = 1 - t`), which needs the full-vocabulary distribution and has about 3x the variance. Either
            must stay unset for mask-noise models.
        self_conditioning (`str`, *optional*, defaults to `"none"`):
            `"none"`: one decoder pass per estimate (the first step of `generate`); `"two_pass"`: training's second
            pass, conditioned on the detached logits of a first pass. The same for old, reference and current.

        > Diffusion sampling (the `kv_cache`, `decoding_threshold` fast paths change the rollouts, not the objective:
        > the ELBO ratio is the model's, whatever sampler produced the completions)

        diffusion_steps (`int` or `None`, *optional*, defaults to `None`):
            Denoising steps for a whole completion. `None` uses `max_completion_length // 2`, as the paper's runs
            (at least one per block). Full-attention models: a multiple of the number of blocks, split evenly.
            Block-diffusion models: read per block, `diffusion_steps // ceil(max_completion_length / block_length)`
            steps for every generated block, clamped to `1..block_length` (a block whose prompt tail pushes the
            completion into one more block gets as many).
        block_length (`int` or `None`, *optional*, defaults to `None`):
            Semi-autoregressive block length. `None`: the trained block size of a block-diffusion model (SDAR 4,
            LLaDA2 32; any other value is refused, since it would change the model's attention pattern), else 32, or
            `max_completion_length` when that is shorter. Full-attention models (and any block_length set
            explicitly, checked before the model is known): `max_completion_length` must be a multiple of it.
            Block-diffusion models with block_length unset: `max_completion_length` may end inside a block (shorter
            than one, or not a multiple); the sampler generates that block whole and keeps the first
            `max_completion_length` tokens, and the likelihood scores the partial last block as it is kept.
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked tokens are revealed at each step: the most confident (`"low_confidence"`, LLaDA's default)
            or uniformly random ones (`"random"`).
        cfg_scale (`float`, *optional*, defaults to `0.0`):
            Classifier-free guidance scale (`0.0` disables it; the unconditional pass masks the prompt).
        decoding_threshold (`float` or `None`, *optional*, defaults to `None`):
            Parallel decoding (Fast-dLLM): each step reveals every masked token of the block whose confidence
            reaches this value, at least one per row, until the block is done; `diffusion_steps` is then unused.
            `None` keeps the exact fixed schedule. Fast-dLLM uses 0.9.
        kv_cache (`str` or `None`, *optional*, defaults to `None`):
            Cache the keys/values outside the active block. Full-attention models (native LLaDA/Dream only):
            `"prefix"` (prompt and finished blocks) or `"dual"` (also the masked blocks after it), refreshed at block
            boundaries and every `kv_cache_refresh` steps; an approximation under bidirectional attention, so `None`
            means `"none"` for them. Block-diffusion models: the cache of the prompt and finished blocks is exact, so
            `None` means `"prefix"`; `"none"` recomputes them at every step (same tokens, slower).
        kv_cache_refresh (`int`, *optional*, defaults to `0`):
            Also refresh the cache every this many steps inside a block (`0`: only at block boundaries).
        stop_at_eos (`bool`, *optional*, defaults to `True`):
            Stop sampling once every completion has an EOS in a finished block (the rest is filled with EOS and cut
            by the trainer anyway, so the kept tokens are unchanged).

        > Model

        mask_token_id (`int` or `None`, *optional*, defaults to `None`):
            Id of the mask token. `None` resolves it from the tokenizer (`mask_token_id`) or the model config.
        shifted_logits (`bool` or `None`, *optional*, defaults to `None`):
            Whether the model's logits at position `i` predict token `i + 1` (Dream-style models adapted from an
            autoregressive LM). `None` detects Dream by its config and assumes unshifted (LLaDA/BERT style) otherwise.
        check_bidirectional (`bool`, *optional*, defaults to `True`):
            Probe the model once at start-up and refuse it if its attention is causal.
        attend_to_padding (`bool` or `None`, *optional*, defaults to `None`):
            `True`: no padding mask, left-padded prompts attend to their pad tokens (LLaDA's own code, and so the
            paper's runs). `False`: pad tokens are masked out and, for LLaDA/Dream, positions count from each row's
            first real token, so a row's logits do not depend on its padding (Dream's own convention). `None` takes
            the model family's convention (LLaDA: `True`; Dream and other models: `False`).
        native_model_families (`bool`, *optional*, defaults to `True`):
            Load LLaDA and Dream checkpoints into transformers' own Llama/Qwen2 classes with bidirectional attention
            (exact logits, no remote code). `False` runs their Hub modelling code instead, which needs
            `trust_remote_code=True`, a pinned `model_init_kwargs={"revision": ...}` and a transformers version that
            code supports.

        > Safety

        max_consecutive_nonfinite (`int`, *optional*, defaults to `10`):
            An update whose gradient norm is NaN or inf is skipped (weights and optimizer state untouched), counted in
            the `guard/skipped_updates` metric, and explained in a warning. After this many skips in a row training
            stops with an error.
        resume_incomplete_checkpoint (`bool`, *optional*, defaults to `False`):
            Resume from a checkpoint that lacks its optimizer, scheduler or RNG state. Off by default because such a
            run silently differs from an uninterrupted one. (`resume_from_checkpoint` also takes `latest`: the newest
            complete `checkpoint-N` in `output_dir`, or a fresh start when there is none.)
        logging_nan_inf_filter (`bool`, *optional*, defaults to `False`):
            Transformers' filter that logs a non-finite loss as the running average; off here, so a NaN loss is
            logged as NaN.
    """

    likelihood_estimator: str = field(
        default="elbo",
        metadata={"help": "Proxy likelihood: 'elbo' (FPO), 'one_step' (diffu-GRPO) or 'spg' (ELBO/EUBO sandwich).",
                  "choices": list(LIKELIHOOD_ESTIMATORS)},
    )
    loss_type: str | None = field(
        default=None,
        metadata={"help": "TRL's loss_type. one_step: TRL's token-level loss (None: TRL's default 'dapo'). elbo/spg: "
                  "how the sequence losses and the DiPOD term are aggregated, as TRL aggregates a sequence-level "
                  "loss ('grpo', 'bnpo', 'dr_grpo', 'dapo', 'luspo'); None: sequence_aggregation."},
    )
    elbo_samples: int = field(default=4, metadata={"help": "Monte-Carlo samples per sequence for the ELBO."})
    elbo_batch_size: int | None = field(
        default=None, metadata={"help": "Max masked copies per ELBO forward (None: all in one forward)."}
    )
    dipod_elbo_samples: int = field(
        default=1, metadata={"help": "one_step: Monte-Carlo samples of the DiPOD term's ELBO."}
    )
    elbo_masking: str = field(
        default="uniform",
        metadata={"help": "ELBO masks: 'uniform', 'stratified', 'antithetic', 'quadrature' or 'block_random' (SPG).",
                  "choices": list(MASKINGS)},
    )
    mask_redraw: str = field(
        default="fixed",
        metadata={"help": "Masks fixed for all inner iterations, or redrawn 'per_iteration'.",
                  "choices": list(MASK_REDRAW)},
    )
    sequence_aggregation: str = field(
        default="mean",
        metadata={"help": "Average sequence losses: 'mean' or 'length'-weighted (SPG).",
                  "choices": list(SEQUENCE_AGGREGATIONS)},
    )
    score_eos: bool = field(default=True, metadata={"help": "Score the completion's first EOS token."})
    after_eos: str = field(
        default="hidden",
        metadata={"help": "After the first EOS the likelihood sees: 'hidden', 'visible' (EOS) or 'masked'.",
                  "choices": list(AFTER_EOS)},
    )
    p_mask_prompt: float = field(
        default=0.15, metadata={"help": "one_step / block_random: probability of masking a prompt token."}
    )
    spg_omega: float = field(default=0.5, metadata={"help": "spg: weight of the EUBO in the negative-advantage mix."})
    spg_eubo_beta: float = field(default=1.0, metadata={"help": "spg: Renyi order of the upper bound (> 0)."})
    normalization: str = field(
        default="sequence",
        metadata={"help": "ELBO normalisation: 'sequence' (sum over tokens, mean over sequences) or 'token'.",
                  "choices": list(NORMALIZATIONS)},
    )
    dipod_beta: float = field(
        default=0.05, metadata={"help": "Weight of the DiPOD on-policy ELBO term; 0 disables it exactly."}
    )
    uniform_likelihood: str = field(
        default="training",
        metadata={"help": "Uniform-noise models (DiffusionGemma): 'training' (the model's own canvas cross-entropy) "
                  "or 'elbo' (the exact continuous-time uniform-state ELBO).", "choices": list(UNIFORM_ESTIMATORS)},
    )
    self_conditioning: str = field(
        default="none",
        metadata={"help": "Uniform-noise models: 'none' or 'two_pass' self-conditioning in every likelihood estimate.",
                  "choices": list(SELF_CONDITIONING)},
    )
    diffusion_steps: int | None = field(
        default=None, metadata={"help": "Denoising steps per completion (None: max_completion_length // 2)."}
    )
    block_length: int | None = field(
        default=None, metadata={"help": "Semi-autoregressive block length (None: the model's trained block size, or 32)."}
    )
    remasking: str = field(
        default="low_confidence",
        metadata={"help": "Remasking strategy: 'low_confidence' or 'random'.", "choices": list(REMASKING)},
    )
    cfg_scale: float = field(default=0.0, metadata={"help": "Classifier-free guidance scale (0 disables)."})
    decoding_threshold: float | None = field(
        default=None, metadata={"help": "Parallel decoding: reveal every token at least this confident (None: exact)."}
    )
    kv_cache: str | None = field(
        default=None, metadata={"help": "KV cache outside the active block: 'none', 'prefix' or 'dual' (None: exact "
                                "prefix cache for block-diffusion models, none otherwise).",
                                "choices": [None, "none", "prefix", "dual"]}
    )
    kv_cache_refresh: int = field(default=0, metadata={"help": "Refresh the KV cache every N steps (0: per block)."})
    stop_at_eos: bool = field(default=True, metadata={"help": "Stop sampling once every row has an EOS."})
    mask_token_id: int | None = field(
        default=None, metadata={"help": "Mask token id (None: from the tokenizer or the model config)."}
    )
    shifted_logits: bool | None = field(
        default=None, metadata={"help": "Logits at i predict token i+1 (Dream). None: detect from the config."}
    )
    check_bidirectional: bool = field(
        default=True, metadata={"help": "Refuse models whose attention is causal (probed once at start-up)."}
    )
    attend_to_padding: bool | None = field(
        default=None,
        metadata={"help": "Let rows attend to pad tokens (LLaDA's convention). None: the model family's default."},
    )
    native_model_families: bool = field(
        default=True,
        metadata={"help": "Load LLaDA/Dream natively (no remote code). False runs their Hub code (trust_remote_code)."},
    )

    max_consecutive_nonfinite: int = field(
        default=10, metadata={"help": "Stop after this many consecutive updates skipped for a NaN/inf gradient."}
    )
    resume_incomplete_checkpoint: bool = field(
        default=False, metadata={"help": "Accept a checkpoint without optimizer/scheduler/RNG state when resuming."}
    )
    logging_nan_inf_filter: bool = field(
        default=False, metadata={"help": "Log a NaN/inf loss as the running average (False: log it as it is)."}
    )

    def __post_init__(self):
        if self.ddp_backend is None and _launched_on_cpu(self.use_cpu):
            # DeepSpeed/Accelerate on CPU otherwise count one process and fail the batch-size checks.
            self.ddp_backend = "gloo"
        _check_numbers(self)
        if self.likelihood_estimator == "one_step":
            if self.loss_type is None:
                self.loss_type = TRL_DEFAULT_LOSS_TYPE  # TRL's token-level loss, TRL's default
        elif self.loss_type is not None and self.sequence_aggregation != "mean":
            raise ValueError(f"loss_type={self.loss_type!r} and sequence_aggregation={self.sequence_aggregation!r} "
                             "both set how the sequence losses are aggregated; set one (sequence_aggregation='length' "
                             "is loss_type='bnpo').")
        super().__post_init__()
        if self.likelihood_estimator not in LIKELIHOOD_ESTIMATORS:
            raise ValueError(
                f"likelihood_estimator must be one of {LIKELIHOOD_ESTIMATORS}, got {self.likelihood_estimator!r}."
            )
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking must be one of {REMASKING}, got {self.remasking!r}.")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}.")
        for name, allowed in (("elbo_masking", MASKINGS), ("mask_redraw", MASK_REDRAW),
                              ("uniform_likelihood", UNIFORM_ESTIMATORS), ("self_conditioning", SELF_CONDITIONING),
                              ("sequence_aggregation", SEQUENCE_AGGREGATIONS), ("after_eos", AFTER_EOS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.elbo_samples < 1:
            raise ValueError(f"elbo_samples must be >= 1, got {self.elbo_samples}.")
        if self.dipod_elbo_samples < 1:
            raise ValueError(f"dipod_elbo_samples must be >= 1, got {self.dipod_elbo_samples}.")
        if self.kv_cache not in (None, "none", "prefix", "dual"):
            raise ValueError(f"kv_cache must be 'none', 'prefix' or 'dual', got {self.kv_cache!r}.")
        if self.kv_cache_refresh < 0:
            raise ValueError(f"kv_cache_refresh must be >= 0, got {self.kv_cache_refresh}.")
        if self.decoding_threshold is not None and not 0.0 < self.decoding_threshold <= 1.0:
            raise ValueError(f"decoding_threshold must be in (0, 1] or None, got {self.decoding_threshold}.")
        if self.elbo_batch_size is not None and self.elbo_batch_size < 1:
            raise ValueError(f"elbo_batch_size must be >= 1 or None, got {self.elbo_batch_size}.")
        if not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError(f"p_mask_prompt must be in [0, 1), got {self.p_mask_prompt}.")
        if not 0.0 <= self.spg_omega <= 1.0:
            raise ValueError(f"spg_omega must be in [0, 1], got {self.spg_omega}.")
        if self.spg_eubo_beta <= 0:
            raise ValueError(f"spg_eubo_beta must be > 0, got {self.spg_eubo_beta}.")
        if self.dipod_beta < 0:
            raise ValueError(f"dipod_beta must be >= 0, got {self.dipod_beta}.")
        if self.max_completion_length is None:
            raise ValueError("max_completion_length must be set: a diffusion LM generates a fixed-length canvas.")
        if self.block_length is not None:
            self.resolve_blocks(None)
        check_contract(self)  # every GRPOConfig field is honoured, mapped or refused by name (grpo_contract)

    def resolve_blocks(self, model_block_size: int | None, default_steps: bool = True) -> None:
        """Settle `block_length` and `diffusion_steps` once the model is known (`model_block_size`: its trained block
        size, `None` for full attention). Full attention refuses combinations that do not divide; a block-diffusion
        model takes any `max_completion_length` and reads `diffusion_steps` per block (see the class docstring).
        `default_steps=False` leaves an unset `diffusion_steps` to the model's own generation config (DiffusionGemma's
        `max_denoising_steps` per canvas)."""
        if model_block_size is not None:
            if self.block_length not in (None, model_block_size):
                raise ValueError(
                    f"block_length={self.block_length}, but this block-diffusion model was trained with blocks of "
                    f"{model_block_size} tokens, which fix its attention pattern. Leave block_length unset (or set "
                    f"{model_block_size}).")
            self.block_length = model_block_size
            num_blocks = -(-self.max_completion_length // model_block_size)
            if self.diffusion_steps is None and default_steps:
                self.diffusion_steps = max(self.max_completion_length // 2, num_blocks)
            if self.diffusion_steps is not None and self.diffusion_steps < 1:
                raise ValueError(f"diffusion_steps must be >= 1, got {self.diffusion_steps}.")
            return
        if self.block_length is None:
            self.block_length = default_block_length(None, self.max_completion_length)
        if self.block_length < 1 or self.max_completion_length % self.block_length != 0:
            raise ValueError(
                f"max_completion_length ({self.max_completion_length}) must be a positive multiple of block_length "
                f"({self.block_length}); change one of them."
            )
        num_blocks = self.max_completion_length // self.block_length
        if self.diffusion_steps is None:
            self.diffusion_steps = max(self.max_completion_length // 2, num_blocks)
        if self.diffusion_steps % num_blocks != 0:
            raise ValueError(
                f"diffusion_steps ({self.diffusion_steps}) must be a multiple of the number of blocks "
                f"({num_blocks} = max_completion_length / block_length)."
            )


# Knobs that must be >= 0 (all float knobs must also be finite); temperature 0 is greedy decoding.
NON_NEGATIVE = ("learning_rate", "weight_decay", "max_grad_norm", "adam_epsilon", "warmup_steps", "temperature",
                "beta", "epsilon", "epsilon_high", "delta", "dipod_beta", "cfg_scale", "p_mask_prompt", "spg_omega")


def _check_numbers(config) -> None:
    """Refuse NaN/inf float knobs and negative values of knobs that must be non-negative, naming the knob."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value) and f.name != "num_train_epochs":
            raise ValueError(f"{f.name} must be a finite number, got {value}.")
    for name in NON_NEGATIVE:
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}." + (
                " Use temperature=0 for greedy decoding." if name == "temperature" else ""))
    if config.max_consecutive_nonfinite < 1:
        raise ValueError(f"max_consecutive_nonfinite must be >= 1, got {config.max_consecutive_nonfinite}.")


def _launched_on_cpu(use_cpu: bool) -> bool:
    """True inside a multi-process launch (torchrun / accelerate launch) on a machine without CUDA, or with use_cpu."""
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and (use_cpu or not torch.cuda.is_available())
