"""What every `trl.GRPOConfig` field does under `DiPODTrainer`, per `likelihood_estimator`: honoured, mapped or
refused.

- **honoured**: it means what it means under `GRPOTrainer`.
- **mapped**: it is read, with a diffusion-LM meaning (`how` says which).
- **refused**: `DiPODConfig` raises at start-up when it is set (to anything but its default, or the values listed as
  `allowed`), naming the field and the alternative, so that a GRPO config moved over never runs a different
  experiment silently.

Every field of the installed TRL's `GRPOConfig` is classified: those of `GRPOConfig` itself (and the
`TrainingArguments` fields whose meaning changes) explicitly in `GROUPS`, every other `TrainingArguments` field by
one rule (read by transformers' Trainer, which DiPOD leaves alone). `tests/test_grpo_contract.py` fails on a field
a new TRL adds until it is classified here. `update_readme("README.md")` rewrites the README's table from
`contract_table()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HONOURED, MAPPED, REFUSED = "honoured", "mapped", "refused"
STATUSES = (HONOURED, MAPPED, REFUSED)
ESTIMATORS = ("elbo", "one_step", "spg")
TRAINER_RULE = "Trainer plumbing"
TRAINER_RULE_HOW = "read by transformers' Trainer; DiPOD changes nothing about it"
README_BEGIN = "<!-- grpo-contract:begin (generated: dipod_trl.grpo_contract.update_readme) -->"
README_END = "<!-- grpo-contract:end -->"


@dataclass(frozen=True)
class Entry:
    """How one field is treated under one estimator. `how`: the mapping (mapped), the reason and the alternative
    (refused), or a note (honoured). `allowed`: values a refused field may still take (beside its default).
    `check`: for a field read only in part, `check(value)` returns the refusal of the part that is not read (or
    None)."""

    status: str
    how: str = ""
    allowed: tuple = ()
    check: Callable[[Any], str | None] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}.")
        if self.status == REFUSED and not self.how:
            raise ValueError("A refused field needs the reason and the alternative in `how`.")


def honoured(how: str = "") -> Entry:
    return Entry(HONOURED, how)


def mapped(how: str, check: Callable[[Any], str | None] | None = None) -> Entry:
    return Entry(MAPPED, how, check=check)


def refused(how: str, allowed: tuple = ()) -> Entry:
    return Entry(REFUSED, how, allowed)


def per_estimator(elbo: Entry, one_step: Entry, spg: Entry) -> dict[str, Entry]:
    return {"elbo": elbo, "one_step": one_step, "spg": spg}


def elbo_like(elbo_spg: Entry, one_step: Entry) -> dict[str, Entry]:
    """The same entry for the ELBO-based estimators (`elbo`, `spg`), another for `one_step`."""
    return per_estimator(elbo_spg, one_step, elbo_spg)


_VLLM = ("only read with use_vllm=True, which is refused (DiPODTrainer samples with its own diffusion sampler); "
         "remove it")
_LOSS_TYPE_ONLY = "only read with loss_type={!r}, which the ELBO estimators refuse (see loss_type); use one_step"
_SPG_NO_RATIO = ("SPG's sandwich objective has no importance ratio to clip; spg_omega and spg_eubo_beta shape it "
                 "(or use likelihood_estimator='elbo')")
_ADAPTIVE_ONLY = "only read with use_adaptive_entropy=True"


def _sequence_loss_type(value: Any) -> str | None:
    """The refusal of a `loss_type` that is not an aggregation of the ELBO estimators' sequence losses."""
    from .losses import LOSS_TYPE_AGGREGATIONS

    if value is None or value in LOSS_TYPE_AGGREGATIONS:
        return None
    return (f"loss_type={value!r} is not honoured with the ELBO estimators: it replaces PPO-clip by another token-"
            f"level objective, which FPO's and SPG's sequence losses do not use. Use one of "
            f"{list(LOSS_TYPE_AGGREGATIONS)} (how the sequence losses are aggregated), or "
            "likelihood_estimator='one_step' for TRL's loss.")


def _unknown_sampler_settings(value: Any) -> str | None:
    """The refusal of the `generation_kwargs` keys no diffusion sampler reads (None when every key is read)."""
    from .canvas_sampler import SAMPLER_SETTINGS

    if value is None:
        return None
    if not isinstance(value, Mapping):
        return f"generation_kwargs must be a dict, got {type(value).__name__}."
    unknown = sorted(str(key) for key in value if key not in SAMPLER_SETTINGS)
    if not unknown:
        return None
    return (f"generation_kwargs key(s) {unknown} are read by no diffusion sampler: the mask-token samplers take no "
            "generation_kwargs (use DiPODConfig's sampler fields: diffusion_steps, remasking, cfg_scale, "
            "decoding_threshold, kv_cache, temperature, top_k, top_p, min_p); DiffusionGemma's reads "
            f"{list(SAMPLER_SETTINGS)}.")


# (group title, {field: Entry for every estimator, or {estimator: Entry}}), in the order of the README table.
GROUPS: tuple[tuple[str, dict[str, Entry | dict[str, Entry]]], ...] = (
    ("Model and reference model", {
        "model_init_kwargs": honoured("passed to DiPOD's loader (dtype names such as 'bfloat16' accepted) and to "
                                      "TRL's reference model"),
        "trust_remote_code": honoured("native families (LLaDA, Dream, SDAR, LLaDA2) load into transformers' "
                                      "classes without Hub code whatever its value; it is needed only for other "
                                      "remote-code models or native_model_families=False"),
        "router_aux_loss_coef": honoured(
            "TRL's MoE load-balancing term, router_aux_loss_coef * aux_loss, added and logged (`aux_loss`) under "
            "every estimator, from the policy estimate's forwards of any MoE model whose routers transformers "
            "records, full-attention or block-causal (transformers' load_balancing_loss_func over each forward's "
            "real tokens, dipod_trl.router_aux); None takes the model config's coefficient (SDAR-MoE and Qwen3-MoE "
            "0.001; LLaDA2's aux-free router has none); a model whose config declares no router logits gets none, "
            "with a warning"),
        "disable_dropout": honoured(),
        "cast_lm_head_to_fp32": honoured("TRL casts the model's `lm_head` (models that have one), which every "
                                         "sampler and likelihood forward goes through"),
    }),
    ("Data", {
        "remove_unused_columns": honoured(),
        "num_generations": honoured(),
        "num_generations_eval": honoured(),
        "max_completion_length": mapped("the fixed length of the canvas the sampler fills (completions are cut "
                                        "after the first EOS, as TRL does); None is refused"),
        "ds3_gather_for_generation": honoured("gathers ZeRO-3 weights for the diffusion sampler"),
        "shuffle_dataset": honoured(),
        "pad_to_multiple_of": honoured("pads the prompt and completion tensors the likelihood scores"),
        "chat_template_kwargs": honoured(),
    }),
    ("Sampling", {
        "generation_batch_size": honoured(),
        "steps_per_generation": honoured(),
        "temperature": mapped("the temperature of the diffusion sampler's Gumbel draws (0 = greedy; DiffusionGemma: "
                              "scales its t_min/t_max schedule); the likelihood terms are of the untempered model "
                              "(TRL divides the policy's logits by it)"),
        "top_p": honoured("nucleus filter on the sampler's proposal distribution before the Gumbel draw "
                          "(sampler.filter_logits, full-attention and block samplers); confidences are read from "
                          "the filtered distribution; DiffusionGemma's own sampler has none and refuses it by name"),
        "top_k": honoured("top-k filter on the sampler's proposal distribution, as top_p"),
        "min_p": honoured("min-p filter (transformers': keep tokens at least min_p times as likely as the most "
                          "likely one) on the sampler's proposal distribution, after top_k and top_p, as top_p"),
        "repetition_penalty": refused("not implemented by the diffusion sampler, which reveals tokens in parallel "
                                      "rather than left to right; leave it at 1.0"),
        "generation_kwargs": mapped(
            "the settings of DiffusionGemma's own sampler (dipod_trl.canvas_sampler.SAMPLER_SETTINGS: "
            "max_denoising_steps, t_min, t_max, entropy_bound, ...); any other key is refused by name, and the "
            "mask-token samplers (LLaDA, Dream, SDAR, LLaDA2, masked LMs) take none: use DiPODConfig's sampler fields "
            "(diffusion_steps, remasking, cfg_scale, decoding_threshold, kv_cache, temperature, top_k, top_p, min_p)",
            check=_unknown_sampler_settings),
        "cache_implementation": refused("it configures model.generate's KV cache for autoregressive sampling; the "
                                        "diffusion samplers' cache is DiPODConfig's kv_cache ('none', 'prefix', "
                                        "'dual'), DiffusionGemma's generation_kwargs={'cache_implementation': ...}"),
    }),
    ("vLLM and transformers continuous batching", {
        "use_vllm": refused("vLLM generates autoregressively; DiPODTrainer samples with its own diffusion sampler. "
                            "Set use_vllm=False"),
        **{name: refused(_VLLM) for name in (
            "vllm_mode", "vllm_model_impl", "vllm_enable_sleep_mode", "vllm_structured_outputs_regex",
            "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout", "vllm_group_port",
            "vllm_gpu_memory_utilization", "vllm_max_model_length", "vllm_tensor_parallel_size",
            "vllm_importance_sampling_correction", "vllm_importance_sampling_mode",
            "vllm_importance_sampling_clip_max", "vllm_importance_sampling_clip_min", "vllm_importance_sampling_cap")},
        "use_transformers_continuous_batching": refused(
            "continuous batching generates autoregressively; DiPODTrainer samples with its own diffusion sampler. "
            "Set use_transformers_continuous_batching=False"),
        "use_transformers_paged": refused("deprecated alias of use_transformers_continuous_batching, which is "
                                          "refused; remove it"),
        "transformers_continuous_batching_config": refused("only read with use_transformers_continuous_batching="
                                                           "True, which is refused; remove it"),
        "max_tool_calling_iterations": refused("tool calling needs autoregressive multi-turn generation, which "
                                               "DiPODTrainer does not do; remove it"),
    }),
    ("Policy loss", {
        "beta": elbo_like(
            mapped("KL to the reference as the sequence estimate beta * (ELBO - ELBO_ref), same masks "
                   "(losses.elbo_kl), instead of TRL's per-token k3"),
            honoured("TRL's per-token k3 KL on the one-step log-probs")),
        "num_iterations": honoured("inner iterations on the same rollouts, with the masks fixed or redrawn "
                                   "(mask_redraw)"),
        "epsilon": per_estimator(
            mapped("PPO clip range of FPO's sequence ratio exp(ELBO_new - ELBO_old)"),
            honoured("TRL's clip range of the per-token one-step ratio"),
            refused(_SPG_NO_RATIO)),
        "epsilon_high": per_estimator(
            mapped("upper clip range of FPO's sequence ratio"),
            honoured(),
            refused(_SPG_NO_RATIO)),
        "delta": per_estimator(
            mapped("caps FPO's sequence ratio from above for negative-advantage sequences (two-sided clipping)"),
            honoured(),
            refused(_SPG_NO_RATIO)),
        "loss_type": elbo_like(
            mapped("aggregates the per-sequence losses, their KL and the DiPOD term exactly as TRL aggregates a "
                   "sequence-level loss over its L_b tokens (losses.sequence_weights): grpo mean over the B "
                   "sequences, bnpo sum L_b l_b / sum L_b, dr_grpo sum L_b l_b / (B * max_completion_length), dapo "
                   "over the generation batch's completion tokens (TRL's num_items_in_batch), luspo sum L_b l_b / "
                   "B; None (DiPODConfig's default) keeps sequence_aggregation. cispo, sapo and vespo replace "
                   "PPO-clip by another objective and are refused", check=_sequence_loss_type),
            honoured("TRL's token-level loss on the one-step log-probs, every loss_type (None: TRL's 'dapo')")),
        "importance_sampling_level": per_estimator(
            mapped("'token' (default): FPO's ratio exp(ELBO_new - ELBO_old), the ELBO at `normalization`; "
                   "'sequence': GSPO's length-normalised ratio exp((ELBO_new - ELBO_old) / L_b) (the same with "
                   "normalization='token')"),
            honoured(),
            refused("SPG has no importance ratio; leave it at 'token' (or use likelihood_estimator='elbo')")),
        "off_policy_mask_threshold": per_estimator(
            mapped("TRL's off-policy sequence mask on FPO's ratio: a negative-advantage sequence is dropped from the "
                   "policy loss when its per-token KL estimate (ELBO_old - ELBO_new) / L_b exceeds the threshold"),
            honoured(),
            refused("SPG computes no old-policy estimate (it has no ratio), so there is no off-policy KL to mask on; "
                    "use likelihood_estimator='elbo' or 'one_step'")),
        "use_bias_correction_kl": elbo_like(
            mapped("with beta != 0, the sequence KL beta * (ELBO - ELBO_ref) times the sequence ratio, gradient "
                   "included, as TRL (FPO's ratio; SPG's on-policy exp(ELBO - sg(ELBO)) = 1). The DiPOD release's "
                   "FPO does not weight it: its recipes set it False"),
            honoured()),
        **{name: elbo_like(refused(_LOSS_TYPE_ONLY.format("sapo")), honoured())
           for name in ("sapo_temperature_neg", "sapo_temperature_pos")},
        **{name: elbo_like(refused(_LOSS_TYPE_ONLY.format("vespo")), honoured())
           for name in ("vespo_k_pos", "vespo_lambda_pos", "vespo_k_neg", "vespo_lambda_neg")},
        "mask_truncated_completions": honoured("truncated completions are not scored by the likelihood (nor the "
                                               "DiPOD term)"),
    }),
    ("Entropy", {
        "top_entropy_quantile": elbo_like(
            refused("the ELBO estimators' losses are per sequence: a high-entropy mask would drop masked positions "
                    "from the ELBO itself, which would then no longer bound the likelihood; use "
                    "likelihood_estimator='one_step', whose token-level loss is TRL's"),
            honoured("TRL's high-entropy token mask over the one-step forward's entropies at the scored positions")),
        "entropy_coef": elbo_like(
            honoured("TRL's objective L = L_policy - coef * H, H the mean entropy of the predictive distributions "
                     "at the ELBO's masked positions, from the same forwards; TRL's policy_loss / entropy / "
                     "entropy_coef metrics (mask-noise models; uniform noise refuses it)"),
            honoured("TRL's bonus on the one-step forward's mean entropy")),
        "use_adaptive_entropy": elbo_like(
            honoured("TRL's controller (Skywork-OR1) on the masked positions' entropy: the coefficient of the last "
                     "optimizer step applies while the window-global entropy is at most entropy_target, and moves "
                     "by entropy_coef_delta within [entropy_coef_min, entropy_coef_max]; its state is saved with "
                     "the checkpoint as TRL does (mask-noise models)"),
            honoured()),
        **{name: honoured(_ADAPTIVE_ONLY)
           for name in ("entropy_coef_min", "entropy_coef_max", "entropy_coef_delta", "entropy_target")},
    }),
    ("Rewards and reference sync", {
        "reward_weights": honoured(),
        "multi_objective_aggregation": honoured(),
        "scale_rewards": honoured(),
        "sync_ref_model": honoured(),
        "ref_model_mixup_alpha": honoured(),
        "ref_model_sync_steps": honoured(),
    }),
    ("Logging", {
        "log_completions": honoured(),
        "log_multimodal": honoured("no effect: image inputs are refused"),
        "num_completions_to_print": honoured(),
        "log_unique_prompts": honoured(),
        "log_completions_hub_repo": honoured(),
    }),
    ("TrainingArguments fields whose meaning or default changes", {
        "learning_rate": honoured("TRL's default 1e-6"),
        "bf16": honoured("TRL's default: bf16 autocast unless fp16"),
        "gradient_checkpointing": honoured("TRL's default True"),
        "logging_steps": honoured("TRL's default 10"),
        "seed": honoured("also keys the likelihood's mask seeds, so a resumed run draws the same masks"),
        "logging_nan_inf_filter": honoured("DiPOD's default False: a NaN/inf loss is logged as it is"),
        "resume_from_checkpoint": mapped("also takes `latest` (newest complete checkpoint-N, or a fresh start); "
                                         "incomplete or damaged checkpoints are refused "
                                         "(resume_incomplete_checkpoint)"),
        "ddp_backend": mapped("None becomes 'gloo' in a multi-process launch on CPU"),
        "auto_find_batch_size": refused("TRL refuses it: halving the batch on out-of-memory breaks the groups of "
                                        "num_generations completions; lower per_device_train_batch_size instead"),
    }),
)


def _training_argument_names() -> tuple[str, ...]:
    from transformers import TrainingArguments

    return tuple(f.name for f in dataclasses.fields(TrainingArguments))


def _build() -> dict[str, dict[str, Entry]]:
    contract: dict[str, dict[str, Entry]] = {}
    for _, fields in GROUPS:
        for name, spec in fields.items():
            if name in contract:
                raise ValueError(f"{name} is classified twice.")
            entries = spec if isinstance(spec, Mapping) else dict.fromkeys(ESTIMATORS, spec)
            if set(entries) != set(ESTIMATORS):
                raise ValueError(f"{name}: classified for {sorted(entries)}, not for every estimator {ESTIMATORS}.")
            contract[name] = dict(entries)
    for name in _training_argument_names():  # the rule: read by transformers' Trainer, unchanged by DiPOD
        contract.setdefault(name, dict.fromkeys(ESTIMATORS, honoured(TRAINER_RULE_HOW)))
    return contract


CONTRACT: dict[str, dict[str, Entry]] = _build()


def classify(field: str, estimator: str) -> Entry:
    """The entry of `field` under `estimator`; `KeyError` for a field nobody classified."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"likelihood_estimator must be one of {ESTIMATORS}, got {estimator!r}.")
    if field not in CONTRACT:
        raise KeyError(f"{field} is not classified in dipod_trl.grpo_contract.")
    return CONTRACT[field][estimator]


def grpo_defaults() -> dict[str, Any]:
    """Default value of every `trl.GRPOConfig` field."""
    from trl import GRPOConfig

    defaults = {}
    for f in dataclasses.fields(GRPOConfig):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    return defaults


def _is_set(value: Any, default: Any, allowed: tuple) -> bool:
    return not (value == default or any(value == a for a in allowed))


def violations(config) -> list[str]:
    """One message per refused field that `config` sets, naming the field, the reason and the alternative."""
    estimator = config.likelihood_estimator
    if estimator not in ESTIMATORS:
        return []  # refused by DiPODConfig with the list of estimators
    problems = []
    for name, default in grpo_defaults().items():
        entry = CONTRACT.get(name, {}).get(estimator)
        if entry is None or not hasattr(config, name):
            continue
        value = getattr(config, name)
        if entry.check is not None and (problem := entry.check(value)):
            problems.append(problem)
        elif entry.status == REFUSED and _is_set(value, default, entry.allowed):
            problems.append(f"{name}={value!r} is not honoured with likelihood_estimator={estimator!r}: {entry.how}.")
    return problems


def check_contract(config) -> None:
    """Raise `ValueError` listing every refused `GRPOConfig` field that `config` sets (`DiPODConfig` calls it)."""
    problems = violations(config)
    if problems:
        raise ValueError("DiPODConfig: " + (problems[0] if len(problems) == 1 else
                                            f"{len(problems)} settings are refused:\n- " + "\n- ".join(problems)))


def counts(fields: list[str] | None = None) -> dict[str, dict[str, int]]:
    """`{estimator: {status: number of fields}}` over `fields` (default: every field of the installed GRPOConfig)."""
    if fields is None:
        fields = list(grpo_defaults())
    return {est: {status: sum(classify(f, est).status == status for f in fields) for status in STATUSES}
            for est in ESTIMATORS}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _notes(entries: dict[str, Entry]) -> str:
    distinct: dict[tuple[str, str], list[str]] = {}
    for est in ESTIMATORS:
        distinct.setdefault((entries[est].status, entries[est].how), []).append(est)
    if len(distinct) == 1:
        return next(iter(distinct))[1]
    return "; ".join(f"{'/'.join(ests)}: {how}" for (_, how), ests in distinct.items() if how)


def contract_table() -> str:
    """The README's markdown: counts per estimator, then one table per group of fields."""
    fields = list(grpo_defaults())
    total = counts(fields)
    lines = [f"Counts over the {len(fields)} fields of the installed TRL's `GRPOConfig`:", "",
             "| estimator | honoured | mapped | refused |", "| --- | --- | --- | --- |"]
    lines += [f"| `{est}` | {c[HONOURED]} | {c[MAPPED]} | {c[REFUSED]} |" for est, c in total.items()]
    explicit = set()
    header = ["", "| field | `elbo` | `one_step` | `spg` | how |", "| --- | --- | --- | --- | --- |"]
    for title, group in GROUPS:
        names = [name for name in group if name in fields]
        explicit.update(group)
        if not names:
            continue
        lines += ["", f"**{title}**", *header]
        for name in names:
            entries = CONTRACT[name]
            lines.append(f"| `{name}` | " + " | ".join(entries[est].status for est in ESTIMATORS)
                         + f" | {_cell(_notes(entries))} |")
    rule = [name for name in fields if name not in explicit]
    if rule:
        lines += ["", f"**{TRAINER_RULE}** ({len(rule)} fields): every other `TrainingArguments` field is honoured "
                  "under every estimator, as under `GRPOTrainer`: transformers' Trainer (or Accelerate) reads it and "
                  "DiPOD changes nothing about it: " + ", ".join(f"`{name}`" for name in rule) + "."]
    return "\n".join(lines) + "\n"


def readme_table(text: str) -> str | None:
    """The generated table in a README's text (between `README_BEGIN` and `README_END`); None without them."""
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return None
    return text[start + len(README_BEGIN):end].strip("\n") + "\n"


def update_readme(path: str | Path) -> bool:
    """Rewrite the generated table of the README at `path` from `contract_table()`; True when it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if readme_table(text) is None:
        raise ValueError(f"{path} has no {README_BEGIN} ... {README_END} block.")
    start, end = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    new = text[:start] + "\n" + contract_table() + text[end:]
    path.write_text(new, encoding="utf-8")
    return new != text
