"""Offline CPU demo: does FPO's ELBO drift apart from the likelihood, and does DiPOD keep them together?

`python examples/demo.py [--quick] [--stress] [--output_dir demo_out]` (`make demo`, `make demo QUICK=1`):

1. builds a tiny bidirectional mask-predictor (ModernBERT, character tokenizer) and bootstraps it by masked-diffusion
   SFT on a generated verifiable task, reversing six digits (`"381902>"` -> `"209183"`), from answers with 30% of
   their digits corrupted: like a base model that knows the task but is unreliable (held-out reward ~0.7);
2. RL-post-trains two copies from that same start with `DiPODTrainer`: FPO (`dipod_beta=0`) and FPO+DiPOD
   (`dipod_beta=0.05`), reward = per-character credit of the answer, with a `DriftCallback` logging the gap between
   the model's log-likelihood (importance-weighted over unmasking orders) and its ELBO on on-policy completions;
3. writes `report.md`, `reward.png`, `drift_gap.png` and `results.json` to the output directory.

Everything is seeded: the same command gives the same numbers on the same machine and thread count.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from datasets import Dataset
from tiny import build_tiny_model, build_tiny_tokenizer  # examples/tiny.py
from tqdm.auto import tqdm
from transformers import PrinterCallback, TrainerCallback
from trl.trainer.utils import pad

from dipod_trl.config import DiPODConfig
from dipod_trl.diagnostics import add_drift_diagnostics
from dipod_trl.models import DiffusionLM
from dipod_trl.sampler import diffusion_generate
from dipod_trl.sft import masked_diffusion_sft
from dipod_trl.trainer import DiPODTrainer

METHODS = {"FPO": 0.0, "FPO+DiPOD": 0.05}


@dataclass(frozen=True)
class DemoSize:
    """How big each stage is; `SIZES` holds the presets."""

    hidden_size: int = 64
    num_layers: int = 2
    sft_steps: int = 600
    sft_noise: float = 0.3  # fraction of corrupted answer digits in the SFT data
    rl_steps: int = 300
    batch_size: int = 64  # completions per RL step
    num_generations: int = 8
    learning_rate: float = 1e-3
    num_iterations: int = 2
    probe_every: int = 10
    probe_size: int = 128
    num_orders: int = 16
    eval_size: int = 512


SIZES = {
    "full": DemoSize(),
    "quick": DemoSize(rl_steps=100, batch_size=32, probe_size=64, num_orders=8, eval_size=256),
    "smoke": DemoSize(sft_steps=20, rl_steps=2, batch_size=8, num_generations=4, probe_every=1, probe_size=4,
                      num_orders=2, eval_size=16),
}
STRESS = {"learning_rate": 3e-3, "num_iterations": 4}  # a larger step, reused for more inner iterations
NUM_DIGITS = 6
COMPLETION_LENGTH = 8  # the reversed digits, then EOS padding


# ------------------------------------------------------------------------------------------------------------ task
def reversal_examples(n: int, seed: int, noise: float = 0.0) -> list[tuple[str, str]]:
    """`n` seeded (prompt, answer) pairs, `"381902>"` -> `"209183"`; each answer digit is corrupted w.p. `noise`."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(NUM_DIGITS))
        answer = [d if rng.random() >= noise else rng.choice("0123456789".replace(d, "")) for d in digits[::-1]]
        pairs.append((f"{digits}>", "".join(answer)))
    return pairs


def digit_credit(text: str, answer: str) -> float:
    """Fraction of answer characters right in place; 1 only for the exact answer (length mismatch costs credit)."""
    text = text.strip()
    return sum(a == b for a, b in zip(text, answer)) / max(len(text), len(answer), 1)


def digit_reward(prompts, completions, answer, **kwargs) -> list[float]:
    """Per-character credit of each completion against its `answer` column (the RL reward)."""
    return [digit_credit(c, a) for c, a in zip(completions, answer)]


def exact_match(prompts, completions, answer, **kwargs) -> list[float]:
    """1 for the exact answer (logged with weight 0, for reading only)."""
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def encode(tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask, and completions `answer + EOS...` of `COMPLETION_LENGTH` tokens."""
    prompts = [torch.tensor(tokenizer(p)["input_ids"]) for p, _ in pairs]
    ids = pad(prompts, padding_value=tokenizer.pad_token_id, padding_side="left")
    mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
    eos = tokenizer.eos_token_id
    completions = [tokenizer(a)["input_ids"] + [eos] * (COMPLETION_LENGTH - len(a)) for _, a in pairs]
    return ids, mask, torch.tensor(completions)


@torch.no_grad()
def evaluate(model, tokenizer, pairs: list[tuple[str, str]], seed: int = 0) -> dict[str, float]:
    """Held-out reward and exact-match rate of temperature-1 samples (fixed generator)."""
    ids, mask, _ = encode(tokenizer, pairs)
    model.eval()
    out = diffusion_generate(
        model, DiffusionLM(tokenizer.mask_token_id), ids, mask, gen_length=COMPLETION_LENGTH,
        block_length=COMPLETION_LENGTH, steps=COMPLETION_LENGTH, temperature=1.0,
        generator=torch.Generator().manual_seed(seed),
    )
    eos = tokenizer.eos_token_id
    texts = [tokenizer.decode(row[: row.index(eos)] if eos in row else row, skip_special_tokens=True)
             for row in out.tolist()]  # cut at the first EOS, as the trainer does
    answers = [a for _, a in pairs]
    return {
        "reward": sum(map(digit_credit, texts, answers)) / len(pairs),
        "exact": sum(t.strip() == a for t, a in zip(texts, answers)) / len(pairs),
    }


# ---------------------------------------------------------------------------------------------------------- stages
def sft_model(size: DemoSize, seed: int, progress: bool = True):
    """A tiny mask-predictor bootstrapped by masked-diffusion SFT on noisy reversals: (model, tokenizer, losses)."""
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=size.hidden_size, num_layers=size.num_layers, seed=seed)
    ids, mask, completions = encode(tokenizer, reversal_examples(4000, seed, size.sft_noise))
    bar = tqdm(total=size.sft_steps, desc="SFT", disable=not progress, leave=False)

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    losses = masked_diffusion_sft(
        model, DiffusionLM(tokenizer.mask_token_id), torch.cat([ids, completions], 1),
        torch.cat([mask, torch.ones_like(completions)], 1), COMPLETION_LENGTH, steps=size.sft_steps, seed=seed,
        on_step=on_step,
    )
    bar.close()
    return model, tokenizer, losses


class _Bar(TrainerCallback):
    """A tqdm bar over RL steps showing the latest reward and drift gap."""

    def __init__(self, desc: str, total: int, disable: bool):
        self.bar = tqdm(total=total, desc=desc, disable=disable, leave=False)
        self.postfix: dict[str, str] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key, name in (("reward", "reward"), ("drift/gap", "gap")):
            if logs and logs.get(key) is not None:
                self.postfix[name] = f"{logs[key]:.3f}"
        self.bar.set_postfix(self.postfix, refresh=False)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


def rl_run(model, tokenizer, method: str, size: DemoSize, seed: int, progress: bool = True, **overrides) -> dict:
    """RL-post-train `model` (in place) with FPO or FPO+DiPOD; returns per-step rewards and the drift probes.

    `overrides` are extra `DiPODConfig` fields. Nothing is saved: the trainer's output directory is temporary.
    """
    train = reversal_examples(4000, seed + 1)
    dataset = Dataset.from_dict({"prompt": [p for p, _ in train], "answer": [a for _, a in train]})
    args = DiPODConfig(
        output_dir=tempfile.mkdtemp(prefix="dipod-demo-"), per_device_train_batch_size=size.batch_size,
        num_generations=size.num_generations, max_completion_length=COMPLETION_LENGTH, block_length=COMPLETION_LENGTH,
        diffusion_steps=COMPLETION_LENGTH, max_steps=size.rl_steps, learning_rate=size.learning_rate,
        lr_scheduler_type="constant", num_iterations=size.num_iterations, dipod_beta=METHODS[method],
        reward_weights=[1.0, 0.0], logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
        use_cpu=True, bf16=False, gradient_checkpointing=False, seed=seed, **overrides,
    )
    trainer = DiPODTrainer(model, [digit_reward, exact_match], args=args, train_dataset=dataset,
                           processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)
    drift = add_drift_diagnostics(trainer, probe_every=size.probe_every, num_orders=size.num_orders,
                                  probe_size=size.probe_size, seed=seed)
    trainer.add_callback(_Bar(method, size.rl_steps, disable=not progress))
    try:
        trainer.train()
    finally:
        shutil.rmtree(args.output_dir, ignore_errors=True)
    logs = [h for h in trainer.state.log_history if "reward" in h and "train_runtime" not in h]
    return {
        "steps": [h["step"] for h in logs],
        "reward": [h["reward"] for h in logs],
        "exact": [h.get("rewards/exact_match/mean") for h in logs],
        "drift": drift.history,
    }


def run_demo(
    size: DemoSize, output_dir: str | Path, seed: int = 0, progress: bool = True, base: tuple | None = None
) -> dict:
    """SFT once (or reuse `base` = `sft_model(...)`), RL each method from that start, evaluate, write the report."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    base_model, tokenizer, sft_losses = base or sft_model(size, seed, progress)
    held_out = reversal_examples(size.eval_size, seed + 10_000)
    results = {"size": asdict(size), "seed": seed, "sft": evaluate(base_model, tokenizer, held_out, seed)}
    results["sft"].update(final_loss=sum(sft_losses[-50:]) / len(sft_losses[-50:]), seconds=time.time() - start)
    for method in METHODS:
        t0 = time.time()
        model = copy.deepcopy(base_model)
        run = rl_run(model, tokenizer, method, size, seed, progress)
        results[method] = {**run, "eval": evaluate(model, tokenizer, held_out, seed), "seconds": time.time() - t0}
    results["seconds"] = time.time() - start
    results["summary"] = summarize(results)
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, output_dir)
    write_report(results, output_dir)
    return results


# ---------------------------------------------------------------------------------------------------------- report
def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(results: dict) -> dict[str, dict[str, float]]:
    """Per method: training reward at the start and over the last 10% of steps, held-out scores, drift gap."""
    out = {}
    for method in METHODS:
        run = results[method]
        tail = max(1, len(run["reward"]) // 10)
        gaps = [d["drift/gap"] for d in run["drift"]]
        out[method] = {
            "reward_start": _mean(run["reward"][:tail]),
            "reward_final": _mean(run["reward"][-tail:]),
            "eval_reward": run["eval"]["reward"],
            "eval_exact": run["eval"]["exact"],
            "gap_start": gaps[0],
            "gap_final": _mean(gaps[-3:]),
            "gap_max": max(gaps),
        }
    return out


def summary_table(summary: dict[str, dict[str, float]]) -> str:
    """The summary as a markdown table."""
    lines = [
        "| method | train reward (first 10% -> last 10%) | held-out reward | held-out exact | drift gap start "
        "| drift gap final (last 3 probes) | drift gap max |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, s in summary.items():
        lines.append(
            f"| {method} | {s['reward_start']:.3f} -> {s['reward_final']:.3f} | {s['eval_reward']:.3f} "
            f"| {s['eval_exact']:.3f} | {s['gap_start']:.3f} | {s['gap_final']:.3f} | {s['gap_max']:.3f} |"
        )
    return "\n".join(lines)


def _smooth(values: list[float], window: int) -> list[float]:
    return [_mean(values[max(0, i - window + 1): i + 1]) for i in range(len(values))]


def plot(results: dict, output_dir: Path) -> None:
    """`reward.png` (training reward, raw and moving average) and `drift_gap.png` (gap, ELBO and IW bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"FPO": "tab:red", "FPO+DiPOD": "tab:blue"}
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for method in METHODS:
        run = results[method]
        ax.plot(run["steps"], run["reward"], color=colors[method], alpha=0.25, linewidth=0.8)
        ax.plot(run["steps"], _smooth(run["reward"], 10), color=colors[method], label=method)
    ax.axhline(results["sft"]["reward"], color="gray", linestyle=":", label="after SFT (held-out)")
    ax.set(xlabel="RL step", ylabel="reward (per-digit credit)", title="Training reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "reward.png", dpi=120)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method in METHODS:
        drift = results[method]["drift"]
        steps = [d["step"] for d in drift]
        left.plot(steps, [d["drift/gap"] for d in drift], "o-", color=colors[method], label=method, markersize=3)
        right.plot(steps, [d["drift/elbo"] for d in drift], "--", color=colors[method], label=f"{method}: ELBO")
        right.plot(steps, [d["drift/loglik"] for d in drift], "-", color=colors[method], label=f"{method}: IW bound")
    left.axhline(0.0, color="gray", linewidth=0.8)
    left.set(xlabel="RL step", ylabel="nats per sequence", title="Drift gap: IW log-likelihood bound - ELBO")
    right.set(xlabel="RL step", ylabel="nats per sequence", title="On-policy ELBO and IW bound")
    left.legend()
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output_dir / "drift_gap.png", dpi=120)
    plt.close(fig)


def write_report(results: dict, output_dir: Path) -> Path:
    """`report.md`: setup, table, plots and wall times."""
    size = DemoSize(**results["size"])
    sft = results["sft"]
    text = f"""# DiPOD demo: FPO vs FPO+DiPOD on a tiny masked-diffusion LM

**Task.** Reverse six digits (`"381902>"` -> `"209183"`); reward = fraction of answer digits right in place
(1 only for the exact answer); `held-out exact` = exact-match rate. Held-out scores: {size.eval_size} unseen prompts,
one temperature-1 sample each with a fixed generator.

**Model and SFT.** ModernBERT mask-predictor (hidden {size.hidden_size}, {size.num_layers} layers, character
tokenizer), {size.sft_steps} steps of masked-diffusion SFT (ELBO loss) on answers with {size.sft_noise:.0%} of their
digits corrupted. After SFT: held-out reward {sft['reward']:.3f}, exact {sft['exact']:.3f}.

**RL.** From the same SFT weights, {size.rl_steps} optimizer steps of `DiPODTrainer` (FPO: PPO-clip on the ELBO
ratio, 4 Monte-Carlo samples), each on {size.batch_size} completions ({size.batch_size // size.num_generations}
prompts x {size.num_generations}) that are reused for `num_iterations={size.num_iterations}` steps, learning rate
{size.learning_rate:g}; FPO uses `dipod_beta=0`, FPO+DiPOD `dipod_beta={METHODS['FPO+DiPOD']}`. Seed {results['seed']}.

**Drift.** `DriftCallback` every {size.probe_every} steps: {size.probe_size} on-policy completions of fixed training
prompts (regenerated with a fixed generator), gap = importance-weighted log-likelihood bound over {size.num_orders}
unmasking orders - ELBO, in nats per sequence (a completion is the 6 digits and EOS).

{summary_table(results['summary'])}

How to read it: the gap is how much the ELBO, the proxy FPO optimises, underestimates the model's own likelihood of
its completions; it is zero when every unmasking order agrees. A gap that grows during RL means the policy's
likelihood proxy and its actual behaviour drift apart; DiPOD's term `-dipod_beta * ELBO(on-policy completions)`
pulls the ELBO back up to the likelihood. Single-seed probes are noisy: see `examples/drift_study.py` for seeds.

![reward](reward.png)

![drift gap](drift_gap.png)

Wall time: {results['seconds']:.0f} s (SFT {sft['seconds']:.0f} s, FPO {results['FPO']['seconds']:.0f} s,
FPO+DiPOD {results['FPO+DiPOD']['seconds']:.0f} s).
"""
    path = output_dir / "report.md"
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a ~1 minute version (fewer, smaller RL steps)")
    group.add_argument("--smoke", action="store_true", help="a few seconds, for tests")
    parser.add_argument("--stress", action="store_true", help=f"harsher RL where FPO drifts: {STRESS}")
    parser.add_argument("--output_dir", default="demo_out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is robust on a shared machine)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    size = SIZES["quick" if args.quick else "smoke" if args.smoke else "full"]
    size = replace(size, **STRESS) if args.stress else size
    results = run_demo(size, args.output_dir, args.seed, progress=not args.no_progress)
    print(summary_table(results["summary"]))
    print(f"Report: {Path(args.output_dir) / 'report.md'} ({results['seconds']:.0f} s)")
    return results


def quiet() -> None:
    """Silence the deprecation chatter of transformers/TRL on tiny models (errors still show)."""
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    transformers.logging.set_verbosity_error()


if __name__ == "__main__":
    main()
