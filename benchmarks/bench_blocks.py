"""Block-diffusion models: the exact KV cache and the one-forward block ELBO against their plain counterparts.

    python benchmarks/bench_blocks.py [--quick] [--output_dir benchmarks/blocks]   (part of `make bench`)

Two small random models of the real shapes' kinds, built with dipod_trl's native classes: an SDAR-shaped dense
Qwen3 (block 4) and a LLaDA2-shaped GLM-4-MoE (block 32, a dense first layer, sigmoid group-limited router with a
shared expert, partial RoPE). Both sides of each comparison run in the same process on the same inputs,
interleaved; times are medians; peak memory is that of a fresh interpreter running the call once (CPU: resident-set
peak above the state before the call; GPU: `max_memory_allocated`).

  (a) generation at temperature 0, cached (prefix once, each finished block stored by the next block's first step)
      vs uncached (the canvas up to the active block at every step, LLaDA2's own generate()): identical tokens;
  (b) the block ELBO's log-probs, forward + backward: one forward of `[prefix ; noised ; clean]` vs a forward per
      block (prompt + clean earlier blocks + the noised block); same values.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_performance import fresh_peak_mib, interleaved, print_call_peak, show  # noqa: E402

from dipod_trl.families import LLaDA2Config, LLaDA2ForDiffusionLM, SDARConfig, SDARForDiffusionLM  # noqa: E402
from dipod_trl.likelihood import completion_logps  # noqa: E402
from dipod_trl.models import diffusion_adapter  # noqa: E402
from dipod_trl.sampler import diffusion_generate  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VOCAB, MASK = 4096, 4095


def build(shape: str, quick: bool):
    """A random model of `shape` ("sdar" or "llada2") and its adapter; the mask token's output row is zeroed."""
    torch.manual_seed(0)
    hidden, layers = (128, 2) if quick else (256, 4)
    common = dict(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 32,
                  num_key_value_heads=hidden // 64, head_dim=32, intermediate_size=4 * hidden, mask_token_id=MASK,
                  max_position_embeddings=8192, attn_implementation="sdpa", pad_token_id=0, attention_dropout=0.0)
    if shape == "sdar":
        model = SDARForDiffusionLM(SDARConfig(**common))
    else:
        model = LLaDA2ForDiffusionLM(LLaDA2Config(
            **common, moe_intermediate_size=hidden, num_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
            num_shared_experts=1, first_k_dense_replace=1, partial_rotary_factor=0.5, rope_theta=600000.0))
    model = model.to(DEVICE).eval()
    with torch.no_grad():
        model.lm_head.weight[MASK].zero_()
    return model, diffusion_adapter(model, mask_token_id=MASK)


def sizes(shape: str, quick: bool) -> dict:
    block = 4 if shape == "sdar" else 32
    return dict(batch=2 if quick else 4, prompt=32 if quick else 96, gen=16 if quick else 128, block=block)


def prompts(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random prompts of different lengths (so rows start at different offsets inside a block)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB - 1, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for r in range(batch):
        mask[r, : 3 * r] = 0
    return ids.masked_fill(mask == 0, 0).to(DEVICE), mask.to(DEVICE)


def generation_callables(shape: str, quick: bool) -> dict:
    model, adapter = build(shape, quick)
    s = sizes(shape, quick)
    ids, mask = prompts(s["batch"], s["prompt"])
    kw = dict(gen_length=s["gen"], block_length=s["block"], steps=s["gen"], temperature=0.0)
    return {name: (lambda c=cache: diffusion_generate(model, adapter, ids, mask, kv_cache=c, **kw))
            for name, cache in (("uncached", "none"), ("cached", "prefix"))}


def per_block_logps(model, adapter, ids, attn, c, noise) -> torch.Tensor:
    """Reference: each completion block in its own forward over the prompt, the clean earlier blocks and itself.
    (Prompts here have a length that is a multiple of the block, so every row's blocks share columns.)"""
    block, p = adapter.block_size, ids.size(1) - c
    out = torch.zeros(noise.shape, device=ids.device)
    for start in range(0, c, block):
        stop = min(start + block, c)
        x = ids[:, : p + stop].clone()
        hit = noise[:, start:stop]
        x[:, p + start:p + stop] = x[:, p + start:p + stop].masked_fill(hit, adapter.mask_token_id)
        logits = model(input_ids=x, attention_mask=attn[:, : p + stop]).logits[:, p + start:p + stop]
        logps = logits.float().log_softmax(-1).gather(-1, ids[:, p + start:p + stop, None])[..., 0]
        out[:, start:stop] = torch.where(hit, logps, 0.0)
    return out


def elbo_callables(shape: str, quick: bool) -> dict:
    model, adapter = build(shape, quick)
    model.train()
    s = sizes(shape, quick)
    c, p = s["gen"], s["prompt"]
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB - 1, (s["batch"], p + c), generator=g).to(DEVICE)
    attn = torch.ones_like(ids)
    noise = (torch.rand(s["batch"], c, generator=g) < 0.5).to(DEVICE)

    def one_forward():
        logps, _ = completion_logps(model, adapter, ids, attn, c, noise[None], noise[None])
        logps.sum().backward()
        return logps[0].detach()

    def loop():
        logps = per_block_logps(model, adapter, ids, attn, c, noise)
        logps.sum().backward()
        return logps.detach()

    return {"per-block loop": loop, "one forward": one_forward}


CALLABLES = {"a": generation_callables, "b": elbo_callables}


def peak_memory_mib(section: str, shape: str, variant: str, quick: bool) -> float:
    return fresh_peak_mib(lambda: CALLABLES[section](shape, quick)[variant], __file__,
                          ["--probe", f"{section}|{shape}|{variant}", *(["--quick"] if quick else [])])


def _probe(spec: str, quick: bool) -> None:
    section, shape, variant = spec.split("|")
    print_call_peak(CALLABLES[section](shape, quick)[variant])


def compare(section: str, shape: str, quick: bool, repeats: int, memory: bool = True) -> list:
    fns = CALLABLES[section](shape, quick)
    (base_name, base), (ours_name, ours) = fns.items()
    same = torch.equal(base(), ours()) if section == "a" else float((base() - ours()).abs().max())
    times = interleaved(fns, repeats)
    mem = {name: peak_memory_mib(section, shape, name, quick) if memory else float("nan") for name in fns}
    s = sizes(shape, quick)
    return [shape, s["block"], s["gen"], times[base_name], times[ours_name], times[base_name] / times[ours_name],
            mem[base_name], mem[ours_name], mem[ours_name] / max(mem[base_name], 1e-9),
            ("yes" if same else "NO") if section == "a" else same]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, key in zip(axes, ("a", "b")):
        rows = results[key]["rows"]
        labels = [r[0] for r in rows]
        x = torch.arange(len(rows)).float()
        ax.bar(x - 0.2, [r[5] for r in rows], 0.4, label="speed-up")
        ax.bar(x + 0.2, [r[8] for r in rows], 0.4, label="memory ratio")
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(x, labels)
        ax.set_title(results[key]["title"], fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (CI)")
    parser.add_argument("--output_dir", type=Path, default=Path(__file__).resolve().parent / "blocks")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory probes (fresh interpreters)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        _probe(args.probe, args.quick)
        return {}
    repeats = 1 if args.quick else 5
    results = {
        "a": show("(a) generation, T=0: cached vs uncached (LLaDA2's generate)",
                  ["model", "block", "gen", "uncached s", "cached s", "speed-up", "uncached MiB", "cached MiB",
                   "memory ratio (cached/uncached)", "same tokens"],
                  [compare("a", shape, args.quick, repeats, not args.no_memory) for shape in ("sdar", "llada2")]),
        "b": show("(b) block ELBO log-probs, forward + backward: one forward vs per-block loop",
                  ["model", "block", "completion", "loop s", "one forward s", "speed-up", "loop MiB",
                   "one forward MiB", "memory ratio (one/loop)", "max |diff|"],
                  [compare("b", shape, args.quick, repeats, not args.no_memory) for shape in ("sdar", "llada2")]),
        "device": str(DEVICE), "quick": args.quick,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, args.output_dir / "blocks.png")
    return results


if __name__ == "__main__":
    main()
