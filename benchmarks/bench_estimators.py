"""ELBO estimators at equal forward budgets: variance of the ELBO and of the FPO log-ratio, gradient cosine, time.

    python benchmarks/bench_estimators.py [--quick] [--output_dir benchmarks/estimators]   (`make bench-estimators`)

For each model, each mask scheme of `dipod_trl.estimators` (uniform = plain Monte Carlo, stratified, antithetic,
quadrature) and each budget of S = 2, 4, 8 masked copies per sequence, over `--replicates` independent mask seeds:
  - `elbo std`: standard deviation across seeds of the sequence ELBO, averaged over the batch's sequences;
  - `ratio std`: standard deviation across seeds of the FPO log-ratio ELBO_new - ELBO_old of every sequence after
    one fixed update (a step along a high-budget policy gradient with random advantages), coupled masks;
  - `cosine`: cosine between the gradient of the DiPOD term -mean ELBO from S copies and a reference gradient from
    256 plain Monte-Carlo copies (mean over seeds);
  - `time`: median seconds of one estimate (forward + backward of the DiPOD term).
Ratios are against plain Monte Carlo at the same S. Models: the demo's SFT model (`examples/demo.py`'s `sft_model`: a
tiny ModernBERT trained on digit reversal; on-policy completions of 7 scored tokens) and the tiny real-format LLaDA
checkpoint of `../shared/models/llada-tiny` (random weights; random 48-token completions), skipped when absent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "examples"))
from demo import COMPLETION_LENGTH, SIZES, encode, quiet, reversal_examples, sft_model  # noqa: E402  (examples/demo.py)

from dipod_trl.estimators import sample_seeds  # noqa: E402
from dipod_trl.likelihood import elbo_per_token  # noqa: E402
from dipod_trl.models import DiffusionLM, diffusion_adapter, load_diffusion_model  # noqa: E402
from dipod_trl.sampler import diffusion_generate  # noqa: E402

SCHEMES = ("uniform", "stratified", "antithetic", "quadrature")
BUDGETS = (2, 4, 8)
console = Console()


def demo_case(quick: bool):
    """The demo's SFT model and on-policy completions (cut after the first EOS, as the trainer does)."""
    model, tokenizer, _ = sft_model(SIZES["quick" if quick else "full"], seed=0, progress=False)
    model.eval()
    ids, mask, _ = encode(tokenizer, reversal_examples(16, 123))
    adapter = DiffusionLM(tokenizer.mask_token_id)
    with torch.no_grad():
        out = diffusion_generate(model, adapter, ids, mask, gen_length=COMPLETION_LENGTH,
                                 block_length=COMPLETION_LENGTH, steps=COMPLETION_LENGTH, temperature=1.0,
                                 generator=torch.Generator().manual_seed(0))
    is_eos = out == tokenizer.eos_token_id
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1), COMPLETION_LENGTH)
    cmask = (torch.arange(COMPLETION_LENGTH) <= first.unsqueeze(1)).long()
    return "demo SFT (ModernBERT)", model, adapter, torch.cat([ids, out], 1), torch.cat([mask, cmask], 1)


def llada_case():
    path = ROOT.parent / "shared" / "models" / "llada-tiny"
    if not path.exists():
        return None
    model = load_diffusion_model(str(path)).eval()
    adapter = diffusion_adapter(model, None, model.config.mask_token_id, check_bidirectional=False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 400, (16, 16 + 48), generator=g)
    return "tiny LLaDA (random)", model, adapter, ids, torch.ones_like(ids)


def sequence_elbo(model, adapter, ids, attn, c, seeds, scheme, s):
    return elbo_per_token(model, adapter, ids, attn, c, seeds, s, masking=scheme).sum(-1)


def flat_grad(model, loss) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def measure(case, c: int, replicates: int, reference_copies: int) -> dict:
    name, model, adapter, ids, attn = case
    params = [p for p in model.parameters() if p.requires_grad]
    seeds = [sample_seeds(r, 0, 0, ids.size(0)) for r in range(max(replicates, reference_copies // 64))]
    # reference gradient of -mean ELBO (plain MC, `reference_copies` copies in chunks of 64)
    chunks = [flat_grad(model, -sequence_elbo(model, adapter, ids, attn, c, seeds[r], "uniform", 64).mean())
              for r in range(reference_copies // 64)]
    reference = torch.stack(chunks).mean(0)
    # a fixed update: one step along a high-budget policy gradient with random advantages
    advantages = torch.randn(ids.size(0), generator=torch.Generator().manual_seed(1))
    step = flat_grad(model, -(advantages * sequence_elbo(model, adapter, ids, attn, c, seeds[0], "uniform", 64)).mean())
    old = {}
    results = {}
    with torch.no_grad():
        for scheme in SCHEMES:
            for s in BUDGETS:
                old[scheme, s] = [sequence_elbo(model, adapter, ids, attn, c, seeds[r], scheme, s)
                                  for r in range(replicates)]
        offset = 0
        for p in params:
            n = p.numel()
            p.sub_(1e-2 * step[offset:offset + n].view_as(p) / step.norm())
            offset += n
        new = {key: [sequence_elbo(model, adapter, ids, attn, c, seeds[r], *key) for r in range(replicates)]
               for key in old}
        offset = 0
        for p in params:  # restore the parameters
            n = p.numel()
            p.add_(1e-2 * step[offset:offset + n].view_as(p) / step.norm())
            offset += n
    for scheme in SCHEMES:
        for s in BUDGETS:
            elbos = torch.stack(old[scheme, s])  # (R, B)
            log_ratio = torch.stack(new[scheme, s]) - elbos
            cosines, times = [], []
            for r in range(replicates):
                start = time.perf_counter()
                grad = flat_grad(model, -sequence_elbo(model, adapter, ids, attn, c, seeds[r], scheme, s).mean())
                times.append(time.perf_counter() - start)
                cosines.append(torch.nn.functional.cosine_similarity(grad, reference, dim=0).item())
            results[f"{scheme}/{s}"] = {
                "elbo_mean": elbos.mean().item(),
                "elbo_std": elbos.std(0).mean().item(),
                "ratio_std": log_ratio.std(0).mean().item(),
                "cosine": statistics.fmean(cosines),
                "time": statistics.median(times),
            }
    return {"model": name, "completion_tokens": c, "scored_tokens": float(attn[:, -c:].sum(1).float().mean()),
            "results": results}


def print_table(measured: dict) -> None:
    res = measured["results"]
    table = Table(title=f"{measured['model']}: ratios to plain MC at the same number of copies "
                        f"(mean scored tokens {measured['scored_tokens']:.1f})")
    for col in ("scheme", "copies", "ELBO std", "× MC", "ratio std", "× MC", "cosine", "× MC", "time ms", "× MC"):
        table.add_column(col, justify="right")
    for scheme in SCHEMES:
        for s in BUDGETS:
            r, base = res[f"{scheme}/{s}"], res[f"uniform/{s}"]
            table.add_row(scheme, str(s), f"{r['elbo_std']:.3f}", f"{r['elbo_std'] / max(base['elbo_std'], 1e-12):.2f}",
                          f"{r['ratio_std']:.4f}", f"{r['ratio_std'] / max(base['ratio_std'], 1e-12):.2f}",
                          f"{r['cosine']:.3f}", f"{r['cosine'] / base['cosine']:.2f}", f"{1e3 * r['time']:.1f}",
                          f"{r['time'] / base['time']:.2f}")
    console.print(table)


def plot(all_measured: list[dict], output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(all_measured), 3, figsize=(12, 3.4 * len(all_measured)), squeeze=False)
    for row, measured in zip(axes, all_measured):
        for ax, key, label in zip(row, ("elbo_std", "ratio_std", "cosine"),
                                  ("ELBO std across seeds", "FPO log-ratio std after one update", "gradient cosine")):
            for scheme in SCHEMES:
                ax.plot(BUDGETS, [measured["results"][f"{scheme}/{s}"][key] for s in BUDGETS], marker="o",
                        label=scheme)
            ax.set_xscale("log", base=2)
            ax.set_xticks(BUDGETS, [str(s) for s in BUDGETS])
            ax.set_xlabel("masked copies per sequence")
            ax.set_title(f"{measured['model']}\n{label}", fontsize=9)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output_dir / "estimators.png", dpi=110)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds, the quick demo model")
    parser.add_argument("--replicates", type=int, default=None)
    parser.add_argument("--output_dir", default=str(ROOT / "benchmarks" / "estimators"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    quiet()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    replicates = args.replicates or (8 if args.quick else 32)
    reference = 64 if args.quick else 256
    start = time.time()
    cases = [demo_case(args.quick), llada_case()]
    measured = []
    for case in filter(None, cases):
        c = COMPLETION_LENGTH if case[0].startswith("demo") else 48
        measured.append(measure(case, c, replicates, reference))
        print_table(measured[-1])
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"replicates": replicates, "reference_copies": reference,
                                                  "wall_seconds": time.time() - start, "cases": measured}, indent=1))
    plot(measured, out)
    console.print(f"wrote {out / 'results.json'} and {out / 'estimators.png'} ({time.time() - start:.0f} s)")
    return measured


if __name__ == "__main__":
    main()
