"""dipod_trl against the paper release on the same model and inputs: rollouts, likelihoods, training steps.

    python benchmarks/bench_performance.py [--quick] [--output_dir benchmarks/performance]   (`make bench`)

Every comparison runs both sides on one LLaDA-shaped bidirectional decoder (the native LLaDA class, random weights
unless trained here), the same inputs, interleaved, and reports medians over repeats as ratios. The release side is
`benchmarks/reference_impl.py` (faithful re-implementations of the release's `generate` and `_get_sequence_elbo`,
with file and line citations), run under `torch.no_grad()` and `eval()` for generation (the release keeps the
autograd graph during rollouts; not doing so here only favours it). Peak memory is the peak resident set of a fresh
interpreter that builds the same model and runs the call once, above its state before the call (CPU), or
`torch.cuda.max_memory_allocated` on a GPU.

Tables (printed, and written with a PNG to `--output_dir`):
  (a) exact generation at temperature 0: speed-up and memory, identical tokens;
  (b) fast decoding on a trained model (SFT here on a copy task): forwards, tokens/s, speed-up, reward;
  (c) ELBO forward + backward: time and memory ratios;
  (d) one training step: where the time goes, and the DiPOD term's overhead per estimator;
  (e) generation time against completion length and batch.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import PrinterCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "examples"))
from reference_impl import release_generate, release_sequence_elbo  # noqa: E402
from tiny import build_tiny_tokenizer  # noqa: E402  (examples/tiny.py)

from dipod_trl.families import LLaDAConfig, LLaDAForDiffusionLM  # noqa: E402
from dipod_trl.likelihood import elbo_per_token  # noqa: E402
from dipod_trl.models import diffusion_adapter  # noqa: E402
from dipod_trl.sampler import diffusion_generate  # noqa: E402
from dipod_trl.sft import masked_diffusion_sft  # noqa: E402

console = Console()
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------------- measurement
def llada_like(vocab: int, hidden: int, layers: int, mask_id: int, seed: int = 0, tokenizer=None):
    """A LLaDA-shaped model (native class). The mask token's output row is zeroed so that greedy decoding never
    proposes it: the release's sampler does not exclude it and ours does, which would otherwise differ."""
    torch.manual_seed(seed)
    special = {} if tokenizer is None else dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    config = LLaDAConfig(d_model=hidden, n_layers=layers, n_heads=max(hidden // 64, 2), n_kv_heads=max(hidden // 64, 2),
                         mlp_hidden_size=4 * hidden, embedding_size=vocab, max_sequence_length=4096, mask_token_id=mask_id,
                         attn_implementation="sdpa", **special)
    model = LLaDAForDiffusionLM(config).to(DEVICE).eval()
    with torch.no_grad():
        model.lm_head.weight[mask_id].zero_()
    return model


def timed(fn) -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, run in turn `repeats` times after one warm-up round."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def _rss_kib() -> int:
    return _status_kib("VmRSS")


def fresh_peak_mib(make_fn, script: str, probe_args: list[str]) -> float:
    """Peak memory of one call of `make_fn()`'s function, in MiB (see the module docstring).

    On a GPU: `max_memory_allocated` around the call. On CPU the call runs in a fresh interpreter (`script
    probe_args`, which must end in `print_call_peak`) that builds the same model and inputs, so the peak resident set
    above its state before the call belongs to the call alone.
    """
    if DEVICE.type == "cuda":
        fn = make_fn()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    out = subprocess.run([sys.executable, script, *probe_args], capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1]) / 1024


def print_call_peak(fn) -> None:
    """Run `fn` once and print the peak resident set it added, in KiB (the probe side of `fresh_peak_mib`)."""
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM): building the model must not count
        f.write("5")
    start = _rss_kib()
    fn()
    print(_status_kib("VmHWM") - start)


def peak_memory_mib(section: str, variant: str, vocab: int, args) -> float:
    return fresh_peak_mib(lambda: CALLABLES[section](vocab, args)[variant], __file__,
                          ["--probe", f"{section}:{variant}:{vocab}", *(["--quick"] if args.quick else [])])


def _probe(spec: str, args) -> None:
    section, variant, vocab = spec.split(":")
    print_call_peak(CALLABLES[section](int(vocab), args)[variant])


def show(title: str, columns: list[str], rows: list[list]) -> dict:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row])
    console.print(table)
    return {"title": title, "columns": columns, "rows": rows}


@contextmanager
def no_grad_eval(model):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


# ------------------------------------------------------------------------------------------------------ (a) and (e)
def generation_pair(model, adapter, prompts, gen, block, steps):
    """Callables for the release's generate and ours, exact decoding at temperature 0."""
    mask_id = adapter.mask_token_id

    def release():
        with no_grad_eval(model):
            return release_generate(model, prompts, steps, gen, block, 0.0, mask_id=mask_id)[:, prompts.size(1):]

    def ours():
        with no_grad_eval(model):
            return diffusion_generate(model, adapter, prompts, None, gen_length=gen, block_length=block, steps=steps)

    return release, ours


def generation_callables(vocab: int, args) -> dict:
    model = llada_like(vocab, args.hidden, args.layers, mask_id=vocab - 1)
    adapter = diffusion_adapter(model, None)
    prompts = torch.randint(0, vocab - 1, (args.batch, args.prompt), device=DEVICE,
                            generator=torch.Generator(device=DEVICE).manual_seed(0))
    release, ours = generation_pair(model, adapter, prompts, args.gen, args.block, args.gen // 2)
    return {"release": release, "ours": ours}


def bench_exact_generation(args) -> dict:
    rows = []
    for vocab in args.vocabs:
        fns = generation_callables(vocab, args)
        same = torch.equal(fns["release"](), fns["ours"]())
        t = interleaved(fns, args.repeats)
        m = {name: peak_memory_mib("a", name, vocab, args) for name in fns}
        rows.append([vocab, t["release"], t["ours"], t["release"] / t["ours"], m["release"], m["ours"],
                     m["release"] / max(m["ours"], 1e-9), "yes" if same else "NO"])
    return show(f"(a) exact generation, temperature 0: {args.batch} x ({args.prompt} prompt + {args.gen} generated), "
                f"block {args.block}, {args.gen // 2} steps; hidden {args.hidden}, {args.layers} layers",
                ["vocab", "release s", "ours s", "speed-up", "release MiB", "ours MiB", "memory ratio",
                 "identical tokens"], rows)


def bench_scaling(args) -> dict:
    vocab = args.scaling_vocab
    model = llada_like(vocab, args.scaling_hidden, 2, mask_id=vocab - 1)
    adapter = diffusion_adapter(model, None)
    rows = []
    settings = [(2, g) for g in args.lengths] + [(b, 128) for b in args.batches if b != 2]
    for batch, gen in settings:
        prompts = torch.randint(0, vocab - 1, (batch, 32), device=DEVICE)
        block = min(32, gen)
        release, ours = generation_pair(model, adapter, prompts, gen, block, gen // 2)
        t = interleaved({"release": release, "ours": ours}, 1 if gen >= 512 else args.repeats)
        rows.append([batch, gen, t["release"], t["ours"], t["release"] / t["ours"],
                     batch * gen / t["ours"]])
    return show(f"(e) scaling, exact decoding (steps = length / 2, block 32): hidden {args.scaling_hidden}, 2 layers, "
                f"vocab {vocab}", ["batch", "length", "release s", "ours s", "speed-up", "ours tokens/s"], rows)


# ----------------------------------------------------------------------------------------------------------- (b)
DIGITS = 16


SFT_NOISE = 0.1


def copy_task(n: int, seed: int, noise: float = 0.0) -> list[tuple[str, str]]:
    """`"0123...>"` -> each digit plus one (mod 10), a task a small RoPE model learns; with `noise`, each answer
    digit of the training data is replaced at random w.p. `noise`, so the model is right but not certain."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(DIGITS))
        answer = "".join(str((int(d) + 1) % 10) if rng.random() >= noise else rng.choice("0123456789") for d in digits)
        out.append((f"{digits}>", answer))
    return out


def bench_fast_decoding(args) -> dict:
    tokenizer = build_tiny_tokenizer()
    gen, block = 24, 8
    model = llada_like(args.fast_vocab, 128, 2, mask_id=tokenizer.mask_token_id, seed=1, tokenizer=tokenizer)
    adapter = diffusion_adapter(model, tokenizer)

    def encode(pairs):
        prompts = torch.tensor([tokenizer(p)["input_ids"] for p, _ in pairs], device=DEVICE)
        eos = tokenizer.eos_token_id
        completions = torch.tensor([tokenizer(a)["input_ids"] + [eos] * (gen - len(a)) for _, a in pairs],
                                   device=DEVICE)
        return prompts, completions

    prompts, completions = encode(copy_task(4000, seed=0, noise=SFT_NOISE))
    start = time.perf_counter()
    masked_diffusion_sft(model, adapter, torch.cat([prompts, completions], 1), torch.ones_like(
        torch.cat([prompts, completions], 1)), gen, steps=args.sft_steps, learning_rate=3e-3, seed=0)
    sft_seconds = time.perf_counter() - start
    test = copy_task(args.eval_prompts, seed=1)
    prompts, _ = encode(test)
    answers = [a for _, a in test]

    def reward(completions: torch.Tensor) -> float:
        eos = tokenizer.eos_token_id
        texts = [tokenizer.decode(r[: r.index(eos)] if eos in r else r, skip_special_tokens=True)
                 for r in completions.tolist()]
        return sum(sum(a == b for a, b in zip(t, ans)) / max(len(t), len(ans)) for t, ans in zip(texts, answers)) \
            / len(answers)

    forwards: dict[str, int] = {}

    def ours(name: str, **kw):
        def run():
            stats: dict = {}
            with no_grad_eval(model):
                out = diffusion_generate(model, adapter, prompts, None, gen_length=gen, block_length=block,
                                         steps=gen, eos_token_ids=[tokenizer.eos_token_id], stats=stats, **kw)
            forwards[name] = stats["forwards"]
            return out
        return run

    def release():
        with no_grad_eval(model):
            return release_generate(model, prompts, gen, gen, block, 0.0, mask_id=tokenizer.mask_token_id)[
                :, prompts.size(1):]

    variants = {
        "ours exact": {},
        "ours exact + dual cache": dict(kv_cache="dual"),
        "ours threshold 0.9": dict(threshold=0.9),
        "ours threshold 0.9 + prefix cache": dict(threshold=0.9, kv_cache="prefix"),
        "ours threshold 0.9 + dual cache": dict(threshold=0.9, kv_cache="dual"),
        "ours threshold 0.7 + dual cache": dict(threshold=0.7, kv_cache="dual"),
        "ours threshold 0.5 + dual cache": dict(threshold=0.5, kv_cache="dual"),
    }
    methods = {"release (exact)": release, **{name: ours(name, **kw) for name, kw in variants.items()}}
    forwards["release (exact)"] = gen
    rewards = {name: reward(fn()) for name, fn in methods.items()}
    t = interleaved(methods, args.repeats)
    base = t["release (exact)"]
    tokens = prompts.size(0) * gen
    rows = [[name, forwards[name], tokens / t[name], base / t[name], rewards[name],
             100 * (rewards[name] - rewards["ours exact"])] for name in methods]
    return show(f"(b) fast decoding on a trained model: LLaDA-shaped (hidden 128, 2 layers, vocab {args.fast_vocab}), "
                f"SFT {args.sft_steps} steps ({sft_seconds:.0f} s) on 'add one to each of {DIGITS} digits' "
                f"({SFT_NOISE:.0%} of training digits wrong); "
                f"{prompts.size(0)} held-out prompts, {gen} tokens in blocks of {block}, temperature 0",
                ["decoding", "forwards", "tokens/s", "speed-up vs release", "reward", "reward - exact (points)"],
                rows)


# ----------------------------------------------------------------------------------------------------------- (c)
def elbo_callables(vocab: int, args) -> dict:
    model = llada_like(vocab, args.hidden, args.layers, mask_id=vocab - 1)
    model.train()
    adapter = diffusion_adapter(model, None)
    c = args.gen
    ids = torch.randint(0, vocab - 1, (args.batch, args.prompt + c), device=DEVICE,
                        generator=torch.Generator(device=DEVICE).manual_seed(0))
    attention = torch.ones_like(ids)
    seeds = torch.arange(args.batch, device=DEVICE)
    generator = torch.Generator(device=DEVICE).manual_seed(0)

    def release():
        release_sequence_elbo(model, ids, args.prompt, 4, mask_id=vocab - 1, generator=generator).sum().backward()
        model.zero_grad(set_to_none=True)

    def ours():
        elbo_per_token(model, adapter, ids, attention, c, seeds, 4).sum().backward()
        model.zero_grad(set_to_none=True)

    return {"release": release, "ours": ours}


def bench_elbo(args) -> dict:
    rows = []
    for vocab in args.vocabs:
        t = interleaved(elbo_callables(vocab, args), args.repeats)
        m = {name: peak_memory_mib("c", name, vocab, args) for name in ("release", "ours")}
        rows.append([vocab, t["release"], t["ours"], t["ours"] / t["release"], m["release"], m["ours"],
                     m["ours"] / max(m["release"], 1e-9)])
    return show(f"(c) sequence ELBO forward + backward, 4 samples: {args.batch} x ({args.prompt} + {args.gen}) tokens, "
                f"hidden {args.hidden}, {args.layers} layers",
                ["vocab", "release s", "ours s", "time ratio (ours/release)", "release MiB", "ours MiB",
                 "memory ratio (ours/release)"], rows)


# ----------------------------------------------------------------------------------------------------------- (d)
class Stopwatch:
    """Wall time spent inside chosen trainer methods (outermost calls only)."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.depth = 0

    def wrap(self, obj, method: str, label, sync=None):
        original = getattr(obj, method)

        def wrapper(*a, **kw):
            name = label() if callable(label) else label
            if self.depth:
                return original(*a, **kw)
            self.depth += 1
            start = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                self.depth -= 1
                self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start
        setattr(obj, method, wrapper)


def train_steps(estimator: str, dipod_beta: float, args, breakdown: bool = False) -> tuple[float, dict]:
    from datasets import Dataset

    from dipod_trl import DiPODConfig, DiPODTrainer

    tokenizer = build_tiny_tokenizer()
    model = llada_like(args.step_vocab, 128, 2, mask_id=tokenizer.mask_token_id, tokenizer=tokenizer)
    data = Dataset.from_dict({"prompt": [f"q{i}: count the digits of {i * 7919}" for i in range(256)]})

    def reward(prompts, completions, **kw):
        return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]

    with tempfile.TemporaryDirectory() as out:
        model.save_pretrained(f"{out}/model")  # the KL reference is loaded from the model's path
        tokenizer.save_pretrained(f"{out}/model")
        config = DiPODConfig(output_dir=out, likelihood_estimator=estimator, dipod_beta=dipod_beta,
                             per_device_train_batch_size=8, num_generations=4, max_completion_length=64,
                             block_length=32, diffusion_steps=32, num_iterations=2, beta=0.04, max_steps=args.steps,
                             use_cpu=DEVICE.type == "cpu", bf16=False, report_to="none", save_strategy="no",
                             disable_tqdm=True, logging_steps=1, gradient_checkpointing=False, stop_at_eos=False)
        trainer = DiPODTrainer(f"{out}/model", [reward], args=config, train_dataset=data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        watch = Stopwatch()
        times: list[float] = []
        if breakdown:
            watch.wrap(trainer, "_generate_single_turn", "generation")
            watch.wrap(trainer, "_get_per_token_logps_and_entropies",
                       lambda: "old / reference forward" if not torch.is_grad_enabled() else "loss forward")
            watch.wrap(trainer, "compute_loss", "loss forward")
        original_step = trainer.training_step

        def step(*a, **kw):
            start = time.perf_counter()
            result = original_step(*a, **kw)
            times.append(time.perf_counter() - start)
            return result
        trainer.training_step = step
        trainer.train()
    per_step = statistics.median(times[2:]) if len(times) > 3 else statistics.median(times)
    parts = {}
    if breakdown:
        total = sum(times)
        inside = sum(watch.totals.values())
        parts = {name: 100 * v / total for name, v in watch.totals.items()}
        parts["backward + optimizer + rest"] = 100 * (total - inside) / total
    return per_step, parts


def bench_steps(args) -> list[dict]:
    _, parts = train_steps("elbo", 0.05, args, breakdown=True)
    tables = [show("(d) where one training step's time goes (elbo + DiPOD, num_iterations 2, KL beta 0.04; % of wall "
                   "time)", ["part", "%"], [[k, v] for k, v in sorted(parts.items(), key=lambda kv: -kv[1])])]
    rows = []
    for estimator in ("elbo", "spg", "one_step"):
        off, _ = train_steps(estimator, 0.0, args)
        on, _ = train_steps(estimator, 0.05, args)
        rows.append([estimator, off, on, 100 * (on / off - 1)])
    tables.append(dipod_term_variance(args))
    tables.append(show(f"(d) DiPOD term overhead per estimator (median s/step after warm-up, {args.steps} steps, "
                       "8 completions x 64 tokens)", ["estimator", "dipod_beta 0", "dipod_beta 0.05", "overhead %"],
                       rows))
    return tables


CALLABLES = {"a": generation_callables, "c": elbo_callables}


def dipod_term_variance(args) -> dict:
    """The one_step DiPOD term's cost and noise against `dipod_elbo_samples`: spread of the sequence-ELBO estimate
    over mask draws (the term is `-dipod_beta` times its batch mean) and the time of its forward + backward."""
    vocab = args.step_vocab
    model = llada_like(vocab, 128, 2, mask_id=vocab - 1).train()
    adapter = diffusion_adapter(model, None)
    ids = torch.randint(0, vocab - 1, (8, 32 + 64), device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(0))
    attention = torch.ones_like(ids)
    rows = []
    for samples in (1, 2, 4):
        with torch.no_grad():
            draws = torch.stack([elbo_per_token(model, adapter, ids, attention, 64, torch.arange(8, device=DEVICE)
                                                + 1000 * r, samples).sum(-1) for r in range(32)])
        batch_mean = draws.mean(1)  # what the term averages over one batch of 8 sequences

        def term(samples=samples):
            elbo_per_token(model, adapter, ids, attention, 64, torch.arange(8, device=DEVICE), samples).sum().backward()
            model.zero_grad(set_to_none=True)
        rows.append([samples, draws.std(0).mean().item(), batch_mean.std().item(), interleaved({"t": term}, 2)["t"]])
    return show("(d) one_step's DiPOD term against dipod_elbo_samples (8 sequences x 64 tokens, 32 mask draws)",
                ["dipod_elbo_samples", "std of a sequence's ELBO", "std of the batch mean", "forward + backward s"],
                rows)


# ------------------------------------------------------------------------------------------------------------ main
def plot(results: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    scaling = [r for r in results["e"]["rows"] if r[0] == 2]
    axes[0].plot([r[1] for r in scaling], [r[2] for r in scaling], "o-", label="release generate")
    axes[0].plot([r[1] for r in scaling], [r[3] for r in scaling], "o-", label="dipod_trl (exact)")
    axes[0].set(xlabel="completion length (tokens)", ylabel="seconds (batch 2)", xscale="log", yscale="log",
                title="(e) exact generation time")
    axes[0].legend()
    fast = results["b"]["rows"]
    axes[1].barh([r[0] for r in fast], [r[3] for r in fast])
    for i, r in enumerate(fast):
        axes[1].annotate(f"reward {r[4]:.2f}, {r[1]} fwd", (r[3], i), xytext=(3, 0), textcoords="offset points",
                         va="center", fontsize=7)
    axes[1].invert_yaxis()
    axes[1].set(xlabel="speed-up vs release generate", xscale="log", title="(b) fast decoding, trained model")
    fig.tight_layout()
    fig.savefig(output_dir / "performance.png", dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller settings, 1 repeat (a smoke run)")
    parser.add_argument("--output_dir", type=Path, default=Path("benchmarks/performance"))
    parser.add_argument("--only", default="abcde", help="which tables, e.g. 'ab'")
    parser.add_argument("--probe", default=None, help=argparse.SUPPRESS)  # internal: one memory measurement
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 16)))
    full = dict(vocabs=[32768, 126464], hidden=256, layers=4, batch=2, prompt=64, gen=128, block=32, repeats=2,
                fast_vocab=32768, sft_steps=400, eval_prompts=64, steps=8, step_vocab=32768, scaling_vocab=8192,
                scaling_hidden=128, lengths=[64, 128, 256, 512], batches=[1, 2, 8])
    quick = dict(full, vocabs=[8192], hidden=128, layers=2, gen=64, repeats=1, fast_vocab=8192, sft_steps=100,
                 eval_prompts=16, steps=4, step_vocab=4096, lengths=[64, 128], batches=[1, 2])
    for key, value in (quick if args.quick else full).items():
        setattr(args, key, value)
    if args.probe:
        return _probe(args.probe, args)
    console.print(f"device: {DEVICE}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    sections = {"a": bench_exact_generation, "b": bench_fast_decoding, "c": bench_elbo, "d": bench_steps,
                "e": bench_scaling}
    for key, fn in sections.items():
        if key in args.only:
            results[key] = fn(args)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / "results.json"
    if args.only != "abcde" and path.exists():  # a partial run updates its tables only
        results = {**json.loads(path.read_text()), **results}
    path.write_text(json.dumps(results, indent=2))
    if "b" in results and "e" in results:
        plot(results, args.output_dir)
    return results


if __name__ == "__main__":
    main()
