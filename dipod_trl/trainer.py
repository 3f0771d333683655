"""`DiPODTrainer`: TRL's `GRPOTrainer` for masked diffusion LMs, with the DiPOD on-policy ELBO regularizer.

Glue over four of GRPOTrainer's override points; everything else (data, rewards, advantages, logging, PEFT,
Accelerate/DeepSpeed) is TRL's:

1. `_generate_single_turn`: completions come from the diffusion sampler instead of `model.generate`.
2. `_generate_and_score_completions`: each rollout gets a mask seed that travels with it through TRL's shuffling
   and splitting, so old, reference and current likelihood estimates of a rollout use identical masks.
3. `_get_per_token_logps_and_entropies`: per-token "log-probs" become the chosen estimator's terms (per-token ELBO
   terms, or diffu-GRPO's one-step log-probs). TRL's old/reference computations use it unchanged.
4. `compute_loss`: FPO, SPG, or TRL's token-level loss (one_step), plus `dipod_beta * (-ELBO(completions))`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
from accelerate.utils import gather, send_to_device
from transformers.utils import logging
from trl import GRPOTrainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import pad

from . import losses
from .checkpoints import check_checkpoint, read_trainer_state, resolve_resume
from .config import DiPODConfig
from .estimators import iteration_seeds, per_token_weights, sample_seeds
from .families import unwrap
from .families.adapters import adapter_to_original_format, read_adapter_weights
from .grpo_contract import check_contract
from .guard import NonFiniteGuard
from .likelihood import elbo_draws, elbo_per_token, eos_convention, mean_over_masked_draws, one_step_logps
from .models import (
    diffusion_adapter,
    load_diffusion_model,
    prepare_for_training,
    training_load_kwargs,
)
from .router_aux import router_aux_losses, router_modules
from .sampler import diffusion_generate
from .tasks import math_verify_timeouts
from .validation import (
    BlankPromptFilter,
    check_dataset,
    check_length,
    check_noise_settings,
    check_special_tokens,
    checked_reward,
    max_positions,
)

logger = logging.get_logger(__name__)


class DiPODTrainer(GRPOTrainer):
    """Trainer for RL post-training of masked diffusion LMs (LLaDA, Dream, masked LMs) with DiPOD.

    A drop-in replacement for `trl.GRPOTrainer` (every `GRPOConfig` field is honoured, mapped or refused by name:
    `dipod_trl.grpo_contract`). LLaDA loads natively, without remote code:

    ```python
    from datasets import Dataset

    from dipod_trl import DiPODConfig, DiPODTrainer

    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": "What is 6 * 7?"}], "answer": "42"},
        {"prompt": [{"role": "user", "content": "What is 9 + 8?"}], "answer": "17"},
    ])


    def correctness_reward(completions, answer, **kwargs):
        return [float(truth in completion[0]["content"]) for completion, truth in zip(completions, answer)]


    trainer = DiPODTrainer(
        model="GSAI-ML/LLaDA-8B-Instruct",
        reward_funcs=correctness_reward,
        args=DiPODConfig(output_dir="llada-dipod", max_completion_length=256),
        train_dataset=dataset,
    )
    trainer.train()
    ```
    """

    _tag_names = ["trl", "dipod", "diffusion-lm"]
    _name = "DiPOD"
    # Model cards cite DiPOD (TRL's `_paper` mechanism). The release (github.com/Astro-Eric/DiPOD-release) gives no
    # BibTeX, authors or arXiv id, so the entry cites the title and the repository only.
    _paper = {
        "title": "Diffusion Policy Optimization without Drifting Apart",
        "citation": (
            "@misc{dipod,\n"
            "    title        = {{Diffusion Policy Optimization without Drifting Apart}},\n"
            "    howpublished = {\\url{https://github.com/Astro-Eric/DiPOD-release}},\n"
            "}"
        ),
    }

    def __init__(self, model, reward_funcs=None, args: DiPODConfig | None = None, train_dataset=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path or "model"
            args = DiPODConfig(f"{name.split('/')[-1]}-DiPOD")
        if not isinstance(args, DiPODConfig):
            raise TypeError(f"args must be a DiPODConfig, got {type(args).__name__}.")
        check_contract(args)  # again: fields changed after the config was built are refused too
        for unsupported in ("tools", "rollout_func", "environment_factory"):
            if kwargs.get(unsupported) is not None:
                raise ValueError(f"`{unsupported}` needs autoregressive multi-turn generation; DiPOD does not do it.")
        check_dataset(train_dataset)
        self.blank_prompts = BlankPromptFilter()
        if train_dataset is not None and not hasattr(train_dataset, "__len__") and hasattr(train_dataset, "filter"):
            train_dataset = train_dataset.filter(self.blank_prompts)  # streaming: skip (and count) blank prompts
        if (args.beta != 0.0 and not isinstance(model, str) and kwargs.get("peft_config") is None
                and not getattr(getattr(model, "config", None), "_name_or_path", "")):
            raise ValueError(
                "beta > 0 needs a reference model, which TRL loads from `model.config._name_or_path`; this model "
                "instance has none. Save it (`model.save_pretrained(path)`) and pass the path, use LoRA "
                "(`peft_config`: the reference is the adapter-free model), or set beta=0."
            )
        init_kwargs = args.model_init_kwargs
        if isinstance(model, str):
            model = load_diffusion_model(model, args.trust_remote_code, native_model_families=args.native_model_families,
                                         **training_load_kwargs(init_kwargs, kwargs))
        self.family = prepare_for_training(model, kwargs)  # the native family (None otherwise), set up for TRL
        # Consumed above (TRL would warn that they are ignored for an instance). For a native family, TRL's reference
        # model must not run the Hub code: with trust_remote_code off, the Auto classes resolve to the native class
        # that `dipod_trl.families` registered.
        trust_remote_code = args.trust_remote_code
        args.model_init_kwargs = None
        args.trust_remote_code = trust_remote_code and self.family is None
        try:
            super().__init__(model=model, reward_funcs=reward_funcs, args=args, train_dataset=train_dataset, **kwargs)
        finally:
            args.model_init_kwargs, args.trust_remote_code = init_kwargs, trust_remote_code
        self.dllm = diffusion_adapter(
            self.model, self._tokenizer, args.mask_token_id, args.shifted_logits, args.check_bidirectional,
            args.attend_to_padding,
        )
        # The model's structure decides block_length (a canvas model's steps default to its generation config)
        args.resolve_blocks(self.dllm.block_size, default_steps=self.dllm.attention != "encoder_decoder")
        if self.aux_loss_enabled and not router_modules(self.model)[0]:
            # The load-balancing loss is taken from the routers transformers records; a model that records none
            # would add nothing, so say so instead of pretending
            logger.warning("router_aux_loss_coef %s is not applied: %s records no router logits. Set "
                           "router_aux_loss_coef=0.0 to silence this.", self.router_aux_loss_coef,
                           type(unwrap(self.model)).__name__)
            self.aux_loss_enabled, self.router_aux_loss_coef = False, 0.0
        self._noise_options = check_noise_settings(args, self.dllm, self._tokenizer.eos_token_id, self.eos_token_ids)
        self._active_seeds: torch.Tensor | None = None
        self.num_skipped_rewards = 0  # completions no reward function could score (None/NaN): advantage set to 0
        self.guard = NonFiniteGuard(args.max_consecutive_nonfinite)
        check_special_tokens(self.dllm.mask_token_id, self._tokenizer.pad_token_id, self.eos_token_ids)
        self.max_positions = max_positions(self.model)
        check_length(self._longest_prompt(self.train_dataset), args.max_completion_length, self.max_positions,
                     "The training dataset")
        self.reward_funcs = [
            f if isinstance(f, torch.nn.Module) else checked_reward(f, name)
            for f, name in zip(self.reward_funcs, self.reward_func_names)
        ]

    # ----------------------------------------------------------------------------------------------------------------
    # Checkpoints of native families: saved in the original Hub format, read back into native names
    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict)
        if self.family is not None and self.args.should_save:
            adapter_to_original_format(self.family, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model if model is not None else self.model
        if self.family is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        weights = os.path.join(resume_from_checkpoint, "model.safetensors")
        if os.path.exists(os.path.join(resume_from_checkpoint, "adapter_model.safetensors")):
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(model, read_adapter_weights(self.family, resume_from_checkpoint))
            if result.unexpected_keys:
                raise ValueError(f"{resume_from_checkpoint}: adapter keys {result.unexpected_keys[:4]} do not fit.")
        elif os.path.exists(weights):  # Hub format: the family's conversions (renames, fused experts, split qkv)
            saved = type(model).from_pretrained(resume_from_checkpoint, dtype=model.dtype)
            model.load_state_dict(saved.state_dict())
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    # ----------------------------------------------------------------------------------------------------------------
    # Safety: resume only from complete, readable checkpoints; skip non-finite updates; log NaN losses as NaN
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, with `resume_from_checkpoint="latest"` and checkpoints checked before anything loads."""
        args = self.args
        checkpoint = resolve_resume(resume_from_checkpoint, args.output_dir, args.world_size)
        if checkpoint is not None:
            state = read_trainer_state(checkpoint)  # a damaged one is refused by name; a missing one below
            mid_cycle = state is not None and state.global_step * args.gradient_accumulation_steps % (
                args.steps_per_generation * args.num_iterations) != 0
            rollouts = [f"rollouts_{i}.pt" for i in range(args.world_size)] if mid_cycle else []
            check_checkpoint(checkpoint, args.world_size, args.resume_incomplete_checkpoint, also_required=rollouts)
        result = super().train(resume_from_checkpoint=checkpoint, **kwargs)
        if self.state.global_step == 0 and self.state.max_steps != 0:
            raise ValueError("Training ran 0 steps: the training dataset yielded no usable rows (empty, or every "
                             f"prompt blank: {self.blank_prompts.skipped} skipped). Check the data source.")
        return result

    # The completions reused over `num_iterations` are per-process run state like the RNG, so they are saved and
    # restored with it: a run resumed mid-cycle reuses them (TRL would regenerate, and shift every later cycle).
    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        torch.save({"step": self._step, "buffer": self._buffered_inputs},
                   os.path.join(output_dir, f"rollouts_{self.args.process_index}.pt"))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        path = os.path.join(checkpoint or "", f"rollouts_{self.args.process_index}.pt")
        if checkpoint is not None and os.path.isfile(path):
            saved = torch.load(path, map_location="cpu", weights_only=True)
            self._step, self._buffered_inputs = saved["step"], send_to_device(saved["buffer"], self.accelerator.device)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.guard.observe_loss(loss)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """Called once per update, before `optimizer.step()`: drop the gradients of a non-finite update so the
        optimizer skips every parameter. (DeepSpeed steps inside `backward` and skips overflowing updates itself.)"""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        if self.guard.should_skip(grad_norm, self.state.global_step, self._get_learning_rate()):
            if not self.is_deepspeed_enabled:
                self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _maybe_log_save_evaluate(self, tr_loss, *args, **kwargs):
        super()._maybe_log_save_evaluate(tr_loss, *args, **kwargs)
        if self.state.global_step == self._globalstep_last_logged and not torch.isfinite(tr_loss).all():
            tr_loss.zero_()  # logged as NaN/inf; `tr_loss -= tr_loss` cannot clear it

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs["guard/skipped_updates"] = float(self.guard.skipped)
            if self.blank_prompts.skipped:
                logs["data/skipped_blank_prompts"] = float(self.blank_prompts.skipped)
            if timeouts := math_verify_timeouts():
                logs["rewards/math_verify_timeouts"] = float(timeouts)
        super().log(logs, start_time)

    def _longest_prompt(self, dataset, limit: int = 50_000) -> int:
        """Tokens in the longest of the first `limit` prompts of a map-style dataset (0 when unknown or unneeded)."""
        if self.max_positions is None or dataset is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
            return 0
        prompts = dataset.select(range(min(len(dataset), limit)))["prompt"] if hasattr(dataset, "select") else None
        if prompts is None:
            return 0
        return max(len(ids) for i in range(0, len(prompts), 256) for ids in self._tokenize_prompts(prompts[i:i + 256])[0])

    # ----------------------------------------------------------------------------------------------------------------
    # 1. Generation
    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        if images is not None:
            raise ValueError("DiPODTrainer does not support image inputs.")
        device = self.accelerator.device
        if any(len(ids) == 0 for ids in prompt_ids):
            raise ValueError("An empty prompt reached the sampler: every example needs a non-empty 'prompt'.")
        check_length(max(len(ids) for ids in prompt_ids), self.args.max_completion_length, self.max_positions,
                     "A training batch")
        tensors = [torch.tensor(ids) for ids in prompt_ids]
        ids = pad(tensors, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
        mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left").to(device)
        args = self.args
        with unwrap_model_for_generation(
            self.model_wrapped, self.accelerator, gather_deepspeed3_params=args.ds3_gather_for_generation
        ) as unwrapped:
            completions = diffusion_generate(
                unwrapped,
                self.dllm,
                ids,
                mask,
                gen_length=args.max_completion_length,
                block_length=args.block_length,
                steps=args.diffusion_steps,
                temperature=self.temperature,
                remasking=args.remasking,
                cfg_scale=args.cfg_scale,
                threshold=args.decoding_threshold,
                kv_cache=args.kv_cache,
                cache_refresh=args.kv_cache_refresh,
                eos_token_ids=self.eos_token_ids if args.stop_at_eos else None,
                top_k=args.top_k,
                top_p=args.top_p,
                min_p=args.min_p,
                pad_token_id=self._tokenizer.pad_token_id,
                sampler_settings=args.generation_kwargs,
                generator=None,  # the global RNG: seeded per rank by TRL and saved/restored with checkpoints
            )
        # Cut after the first end-of-sequence token, as TRL does: what follows is padding of the canvas.
        is_eos = torch.isin(completions, torch.tensor(self.eos_token_ids, device=device))
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1), completions.size(1))
        return [row[: int(n) + 1].tolist() for row, n in zip(completions.cpu(), first.cpu())], None

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards, refusing infinities and counting the completions skipped because no reward scored them."""
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if torch.isinf(rewards).any():
            bad = [name for i, name in enumerate(self.reward_func_names) if torch.isinf(rewards[:, i]).any()]
            raise ValueError(f"Reward function(s) {bad} returned +-inf; return a finite float, or None to skip.")
        skipped = int(torch.isnan(rewards).all(dim=1).sum())
        self.num_skipped_rewards += skipped
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["rewards/skipped"].append(float(skipped))
        return rewards

    # ----------------------------------------------------------------------------------------------------------------
    # 2. Coupled randomness: a seed per rollout
    @contextmanager
    def _mask_seeds(self, seeds: torch.Tensor):
        previous, self._active_seeds = self._active_seeds, seeds
        try:
            yield
        finally:
            self._active_seeds = previous

    def _generate_and_score_completions(self, inputs):
        # Keyed on the optimizer step (restored on resume) and the micro-step inside it, not on a session counter,
        # so a resumed run draws the same masks as an uninterrupted one.
        round_key = self.state.global_step * 4099 + self._step % self.args.gradient_accumulation_steps
        seeds = sample_seeds(
            self.args.seed, round_key, self.accelerator.process_index, len(inputs), device=self.accelerator.device
        )
        self._rollout = {"calls": 0}  # TRL scores the rollouts here: old estimate first (if it needs one), then ref
        try:
            with self._mask_seeds(seeds):
                output = super()._generate_and_score_completions(inputs)
        finally:
            self._rollout = None
        output["mask_seeds"] = seeds
        return output

    def _redraws_masks(self) -> bool:
        return self.args.mask_redraw == "per_iteration" and self.num_iterations > 1

    def _iteration(self) -> int:
        """The inner iteration of the current micro-step when masks are redrawn per iteration (else, and in eval, 0)."""
        if not self._redraws_masks() or not self.model.training:
            return 0
        return (self._step % (self.args.steps_per_generation * self.num_iterations)) // self.args.steps_per_generation

    def _for_iteration(self, per_token: torch.Tensor | None) -> torch.Tensor | None:
        """This iteration's slice of old/reference terms stored for every iteration `(B, I, C)`."""
        return per_token[:, self._iteration()] if per_token is not None and per_token.dim() == 3 else per_token

    def _old_logps_requested(self) -> bool:
        """TRL's own condition (GRPOTrainer._generate_and_score_completions) for computing an old estimate."""
        return self.args.gradient_accumulation_steps % (self.args.steps_per_generation * self.num_iterations) != 0

    def _likelihood_view(self, input_ids, attention_mask, c: int):
        """`eos_convention`: the ids and attention the likelihood sees, and the scored completion positions."""
        return eos_convention(input_ids, attention_mask, c, self.eos_token_ids, self.dllm.mask_token_id,
                              self.args.score_eos, self.args.after_eos)

    def _elbo_kwargs(self, scored: torch.Tensor) -> dict:
        args = self.args
        return dict(masking=args.elbo_masking, scored=scored, block_length=args.block_length,
                    p_mask_context=args.p_mask_prompt, batch_size=args.elbo_batch_size,
                    noise_options=self._noise_options)

    # ----------------------------------------------------------------------------------------------------------------
    # 3. Per-token likelihood terms
    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
        compute_aux_loss=False, **unused
    ):
        seeds = self._active_seeds
        if seeds is None:  # called outside a rollout (TRL's signature): fresh seeds from the global RNG, so this
            # estimate is not coupled to any other call
            seeds = torch.randint(0, 2**31 - 1, (input_ids.size(0),), device=input_ids.device)
        if seeds.numel() != input_ids.size(0):
            raise RuntimeError("Likelihood estimate requested without one mask seed per row (coupling would break).")
        iterations = [self._iteration()]
        rollout = getattr(self, "_rollout", None)
        if rollout is not None:
            is_old = rollout["calls"] == 0 and self._old_logps_requested()
            rollout["calls"] += 1
            if is_old and self.args.likelihood_estimator == "spg":
                return None, None, None  # SPG has no ratio: an old estimate would be a forward nobody reads
            if self._redraws_masks() and self.model.training:
                iterations = list(range(self.num_iterations))  # old/ref for every iteration's masks: (B, I, C)
        ids, attn, scored = self._likelihood_view(input_ids, attention_mask, logits_to_keep)
        with router_aux_losses(enabled=compute_aux_loss) as aux:
            terms = [self._per_token_terms(model, ids, attn, logits_to_keep, iteration_seeds(seeds, it), scored,
                                           batch_size, compute_entropy) for it in iterations]
        aux_loss = self._mean_aux(aux) if compute_aux_loss else None  # TRL adds router_aux_loss_coef * aux_loss
        if len(terms) == 1:
            return terms[0][0], terms[0][1], aux_loss
        return torch.stack([logps for logps, _ in terms], dim=1), None, aux_loss

    def _mean_aux(self, collected: list) -> torch.Tensor:
        """Mean MoE load-balancing loss of the forwards collected (0 when none returned one)."""
        return torch.stack(collected).mean() if collected else torch.zeros((), device=self.accelerator.device)

    def _per_token_terms(self, model, ids, attn, c, seeds, scored, batch_size, compute_entropy):
        """Per-token terms `(B, C)` of the estimator and, if asked, the per-token predictive entropies at the scored
        positions (ELBO estimators: averaged over the draws that masked each position), with gradients only while
        the entropy bonus is on, as TRL."""
        with self.accelerator.autocast():
            if self.args.likelihood_estimator == "one_step":
                logps, entropies = one_step_logps(
                    model, self.dllm, ids, attn, c, seeds, self.args.p_mask_prompt, compute_entropy=compute_entropy,
                    batch_size=batch_size, scored=scored, keep_unscored=self.args.after_eos == "visible",
                )
            else:
                logps, masks, weights, *drawn = elbo_draws(model, self.dllm, ids, attn, c, seeds,
                                                           self.args.elbo_samples, compute_entropy=compute_entropy,
                                                           **self._elbo_kwargs(scored))
                entropies = mean_over_masked_draws(drawn[0], masks) if compute_entropy else None
                logps = (logps * per_token_weights(weights)).mean(0)
        if entropies is not None and not self._entropy_bonus_enabled:
            entropies = entropies.detach()
        return logps, entropies

    # ----------------------------------------------------------------------------------------------------------------
    # 4. Losses
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("DiPODTrainer does not return outputs from compute_loss.")
        args = self.args
        mode = "train" if self.model.training else "eval"
        scale = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        view = self._likelihood_view(*self._joined(inputs))
        scored = view[2]
        valid = scored.sum(-1) > 0
        if not valid.any():  # every completion masked (e.g. all truncated with mask_truncated_completions)
            self._log_mean(mode, "dipod/policy_loss", torch.zeros(()))
            return self._zero_loss(model, inputs, view)
        weights = self._sequence_weights(scored, inputs, mode)
        with self._mask_seeds(inputs["mask_seeds"]):
            if args.likelihood_estimator == "one_step":
                trl_inputs = {**inputs, "completion_mask": scored.to(inputs["completion_mask"].dtype)}
                for key in ("old_per_token_logps", "ref_per_token_logps"):
                    trl_inputs[key] = self._for_iteration(inputs.get(key))
                loss = super()._compute_loss(model, trl_inputs)  # TRL's token-level loss, already divided by `scale`
                policy_loss = loss.detach() * scale
                elbo = self._sequence_elbo(model, inputs, view) if args.dipod_beta > 0 else None
            else:
                with router_aux_losses(enabled=self.aux_loss_enabled) as aux:
                    policy_loss, elbo = self._elbo_policy_loss(model, inputs, mode, view, weights)
                loss = policy_loss / scale
                policy_loss = policy_loss.detach()
                if self.aux_loss_enabled:  # TRL's term, on the policy estimate's forwards (one_step: TRL adds it)
                    aux_loss = self._mean_aux(aux)
                    loss = loss + self.router_aux_loss_coef * aux_loss / scale
                    self._log_mean(mode, "aux_loss", aux_loss)
        if elbo is not None:
            regularizer = losses.dipod_regularizer(elbo, weights, args.dipod_beta)
            if args.dipod_beta > 0:
                loss = loss + regularizer / scale
            self._log_mean(mode, "dipod/elbo", losses.aggregate(elbo.detach(), valid))
            self._log_mean(mode, "dipod/regularizer", regularizer.detach())
        self._log_mean(mode, "dipod/policy_loss", policy_loss)
        return loss

    def _sequence_weights(self, scored: torch.Tensor, inputs, mode: str) -> torch.Tensor:
        """How this micro-batch's sequence losses are aggregated (`losses.sequence_weights`): the ELBO estimators'
        `loss_type`, else `sequence_aggregation` (also one_step's DiPOD term; its policy loss is TRL's)."""
        args = self.args
        rule = args.loss_type
        if args.likelihood_estimator == "one_step" or rule is None:
            rule = args.sequence_aggregation
        tokens = None
        if rule == "dapo":  # TRL's normaliser: the generation batch's completion tokens, per process and micro-batch
            tokens = inputs["num_items_in_batch"].float() / self.accelerator.num_processes
            if mode == "train":
                tokens = tokens / args.steps_per_generation
        return losses.sequence_weights(scored.sum(-1), rule, args.max_completion_length, tokens)

    def _zero_loss(self, model, inputs, view) -> torch.Tensor:
        """Loss 0 with zero gradients, as TRL gives a batch with nothing to score: one scored position keeps the
        graph, so that backward (and DeepSpeed's step) runs as for any batch."""
        ids, attn, scored = view
        first = torch.zeros_like(scored)
        first[0, -1] = True
        with self.accelerator.autocast():
            logps, _, _ = elbo_draws(model, self.dllm, ids, attn, scored.size(1), inputs["mask_seeds"], 1,
                                     **self._elbo_kwargs(first))
        return logps.sum() * 0.0

    def _sequence_elbo(self, model, inputs, view) -> torch.Tensor:
        """Per-sequence ELBO of the batch's completions under `model`, with gradients (one_step's DiPOD term)."""
        ids, attn, scored = view
        seeds = iteration_seeds(inputs["mask_seeds"], self._iteration())
        with self.accelerator.autocast():
            per_token = elbo_per_token(model, self.dllm, ids, attn, scored.size(1), seeds, self.args.dipod_elbo_samples,
                                       **self._elbo_kwargs(scored))
        return losses.sequence_elbo(per_token, scored, self.args.normalization)

    def _elbo_policy_loss(self, model, inputs, mode: str, view, weights) -> tuple[torch.Tensor, torch.Tensor]:
        """FPO or SPG loss of the micro-batch (before accumulation scaling) and the per-sequence ELBO it used."""
        args = self.args
        ids, attn, scored = view
        valid = scored.sum(-1) > 0
        lengths = scored.sum(-1)
        advantages = inputs["advantages"]
        seeds = iteration_seeds(inputs["mask_seeds"], self._iteration())
        bonus = self._entropy_bonus_enabled  # TRL's entropy bonus (static or adaptive), on the ELBO's own forwards
        with self.accelerator.autocast():
            logps, masks, weights_k, *entropies = elbo_draws(
                model, self.dllm, ids, attn, scored.size(1), seeds, args.elbo_samples, compute_entropy=bonus,
                **self._elbo_kwargs(scored))
        per_token = (logps * per_token_weights(weights_k)).mean(0)
        elbo = losses.sequence_elbo(per_token, scored, args.normalization)

        if args.likelihood_estimator == "spg":
            eubo = losses.spg_eubo(logps, masks, weights_k, scored, args.spg_eubo_beta, args.normalization)
            per_seq = losses.spg_policy_loss(elbo, eubo, advantages, args.spg_omega)
            ratio = torch.exp(elbo - elbo.detach())  # on-policy: 1, with the gradient of the log-ratio
            self._log_mean(mode, "spg/eubo", losses.aggregate(eubo.detach(), valid))
        else:
            old = self._for_iteration(inputs.get("old_per_token_logps"))
            elbo_old = elbo.detach() if old is None else losses.sequence_elbo(old, scored, args.normalization)
            per_token_scale = lengths if args.normalization == "sequence" else None  # ELBO summed over tokens
            per_seq, ratio = losses.fpo_policy_loss(
                elbo, elbo_old, advantages, self.epsilon_low, self.epsilon_high, args.delta,
                lengths=per_token_scale if args.importance_sampling_level == "sequence" else None,
            )
            if args.off_policy_mask_threshold is not None:  # TRL's OPSM, on the per-token sequence log-ratio
                log_ratio = elbo - elbo_old
                if per_token_scale is not None:
                    log_ratio = log_ratio / per_token_scale.clamp(min=1)
                per_seq = per_seq * losses.off_policy_keep(advantages, log_ratio, args.off_policy_mask_threshold)
            is_low = (ratio < 1 - self.epsilon_low) & (advantages < 0) & valid
            is_high = (ratio > 1 + self.epsilon_high) & (advantages > 0) & valid
            self._log_mean(mode, "clip_ratio/low_mean", losses.aggregate(is_low.float(), valid))
            self._log_mean(mode, "clip_ratio/high_mean", losses.aggregate(is_high.float(), valid))
            self._log_mean(mode, "clip_ratio/region_mean", losses.aggregate((is_low | is_high).float(), valid))
        if self.beta != 0.0:
            ref = losses.sequence_elbo(self._for_iteration(inputs["ref_per_token_logps"]), scored, args.normalization)
            kl = losses.elbo_kl(elbo, ref, ratio if args.use_bias_correction_kl else None)
            per_seq = per_seq + self.beta * kl
            self._log_mean(mode, "kl", losses.aggregate(kl.detach(), valid))
        loss = (per_seq * weights).sum()
        if bonus:
            loss = self._entropy_bonus(loss, entropies[0], masks, mode)
        return loss, elbo

    def _entropy_bonus(self, loss: torch.Tensor, entropies: torch.Tensor, masks: torch.Tensor, mode: str):
        """TRL's objective `L = L_policy - coef * H`, H the mean entropy at the ELBO draws' masked positions, with
        TRL's adaptive controller (Skywork-OR1) when `use_adaptive_entropy`: the coefficient set at the last optimizer
        step applies while that step's window-global entropy was at most `entropy_target`, and is moved by
        `entropy_coef_delta` at each step boundary. The state lives in TRL's attributes, so TRL's checkpoint code
        saves and restores it (`entropy_ctrl_state.json`)."""
        args = self.args
        masks = masks.to(entropies.dtype)
        entropy = (entropies * masks).sum() / masks.sum().clamp(min=1)
        apply_coef = self.entropy_coef
        if self.use_adaptive_entropy and self._last_world_entropy > args.entropy_target:
            apply_coef = 0.0
        self._log_mean(mode, "policy_loss", loss.detach())
        self._log_mean(mode, "entropy", entropy.detach())
        if self.use_adaptive_entropy and mode == "train":
            stats = torch.stack([(entropies * masks).sum(), masks.sum()]).detach().float()
            window = self._entropy_window_stats
            self._entropy_window_stats = stats if window is None else window + stats
            if self.accelerator.sync_gradients:
                totals = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
                world_entropy = (totals[0] / totals[1].clamp(min=1.0)).item()
                if world_entropy <= args.entropy_target:
                    self.entropy_coef = min(self.entropy_coef + args.entropy_coef_delta, args.entropy_coef_max)
                else:
                    self.entropy_coef = max(self.entropy_coef - args.entropy_coef_delta, args.entropy_coef_min)
                self._last_world_entropy = world_entropy
                self._entropy_window_stats = None
        if mode == "train" and self.accelerator.sync_gradients:  # TRL logs it once per optimizer step
            self._metrics[mode]["entropy_coef"].append(self.entropy_coef)
        return loss - apply_coef * entropy

    @staticmethod
    def _joined(inputs) -> tuple[torch.Tensor, torch.Tensor, int]:
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        return input_ids, attention_mask, inputs["completion_ids"].size(1)

    def _log_mean(self, mode: str, name: str, value: torch.Tensor) -> None:
        """Log the mean over processes of a scalar through the Trainer's metric buffer."""
        value = value.detach().float().reshape(1).to(self.accelerator.device)
        self._metrics[mode][name].append(gather(value).mean().item())

