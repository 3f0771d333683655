"""DiffusionGemma likelihood estimators: variance and cost of (a) the SFT recipe's objective vs (b) UDLM's ELBO.

    python benchmarks/bench_uniform_likelihood.py [--model /work/shared/models/diffusiongemma-tiny] [--quick]

On a batch of `[prompt ; completion]` rows (completions of 4 canvases, some ending early with EOS), for each
estimator and self-conditioning choice:
- the per-sequence estimate (mean over seeds) and its standard deviation over seeds with 1 and 4 samples;
- the standard deviation of the log-ratio `est(theta') - est(theta)` between the model and a perturbed copy
  (weights * (1 + 1e-3 noise)) with coupled draws (same seeds, what the trainer's ratio sees) and independent ones;
- time per call (median): forward only, and forward + backward, for 1 sample; next to the recipe's own call
  repeated per canvas (the encoder re-run over the whole sequence for every canvas), the cost the shared encoder
  pass saves;
- at the release's vocabulary (262,144), the per-position terms alone on random logits: time (forward + backward)
  and the bytes autograd saves for the backward, (a)'s log-softmax-gather vs (b)'s ELBO integrand.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

from dipod_trl.uniform_likelihood import elbo_integrand, token_logps, uniform_corruption, uniform_elbo_draws

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "models" / "diffusiongemma-tiny"
EOS = [1, 106, 50]


def batch(rows: int, prompt: int, completion: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 500, (rows, prompt + completion), generator=g)
    ids[torch.isin(ids, torch.tensor(EOS))] = 7
    attn = torch.ones_like(ids)
    for r in range(rows):
        attn[r, : r % 5] = 0  # left padding
        end = completion - (r * 11) % completion if r % 2 else completion  # odd rows end early with an EOS
        if end < completion:
            ids[r, prompt + end - 1] = 106
            attn[r, prompt + end:] = 0
    return ids, attn


def estimate(model, ids, attn, c, seeds, samples, **kw) -> torch.Tensor:
    lp, _, w = uniform_elbo_draws(model, ids, attn, c, seeds, samples, fill_token_id=1, eos_token_ids=EOS, **kw)
    return (lp * w).mean(0).sum(-1)


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def recipe_calls(model, ids, attn, c, seeds) -> torch.Tensor:
    """The recipe's forward for every canvas (encoder over the whole sequence each time), the same draws."""
    width, vocab = model.config.canvas_length, model.config.get_text_config().vocab_size
    p, k = ids.size(1) - c, -(-c // width)
    draw = uniform_corruption(seeds, k, width, vocab, 1)
    total = 0.0
    targets = torch.nn.functional.pad(ids[:, p:], (0, k * width - c), value=1)
    for j in range(k):
        cols = slice(j * width, (j + 1) * width)
        canvas = torch.where(draw.corrupt[0, :, cols], draw.tokens[0, :, cols], targets[:, cols])
        e = p + j * width
        keep = (torch.arange(ids.size(1)) < e) & attn.bool()
        out = model(input_ids=ids, attention_mask=attn, decoder_input_ids=canvas,
                    decoder_attention_mask=torch.cat([keep, torch.ones_like(canvas, dtype=torch.bool)], 1),
                    decoder_position_ids=e + torch.arange(width).expand(len(ids), -1))
        total = total + out.logits.log_softmax(-1).gather(-1, targets[:, cols, None]).sum()
    return total


def head_cost(vocab: int, positions: int, repeats: int) -> None:
    """Per-position terms on random logits `(1, positions, vocab)`: time (fwd + bwd) and saved-for-backward bytes."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(1, positions, vocab, generator=g) * 3).requires_grad_()
    clean = torch.randint(0, vocab, (1, positions), generator=g)
    noisy = torch.where(torch.rand(1, positions, generator=g) < 0.5, clean, torch.randint(0, vocab, (1, positions)))
    t = torch.full((1, 1), 0.3)
    fns = {"training": lambda: token_logps(logits, clean),
           "elbo": lambda: elbo_integrand(logits, clean, noisy, t)}
    for name, fn in fns.items():
        saved: dict[int, int] = {}  # distinct storages kept for the backward

        def pack(x, saved=saved):
            saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fn()
        ms = timed(lambda fn=fn: fn().sum().backward(), repeats) * 1e3
        print(f"  {name:>8}: {ms:8.1f} ms fwd+bwd, {sum(saved.values()) / positions / vocab:5.1f} bytes/logit saved "
              f"(the logits themselves: 4)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(DEFAULT))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from transformers import DiffusionGemmaForBlockDiffusion

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(args.model).eval()
    perturbed = copy.deepcopy(model)
    with torch.no_grad():
        for param in perturbed.parameters():
            param.mul_(1 + 1e-3 * torch.randn_like(param))
    rows, prompt, c = 8, 32, 4 * model.config.canvas_length
    ids, attn = batch(rows, prompt, c)
    seeds_n = 16 if args.quick else 64
    repeats = 3 if args.quick else 7
    print(f"batch: {rows} rows, prompt {prompt} columns, completion {c} (canvas {model.config.canvas_length}), "
          f"completion lengths {attn[:, prompt:].sum(1).tolist()}; {seeds_n} seed sets; 1 thread")
    print(f"{'estimator':>9} {'self-cond':>9} | {'mean/seq':>9} {'std S=1':>8} {'std S=4':>8} | {'ratio std':>9} "
          f"{'indep.':>8} | {'fwd ms':>7} {'fwd+bwd ms':>10}")
    for estimator in ("training", "elbo"):
        for sc in ("none", "two_pass"):
            kw = dict(estimator=estimator, self_conditioning=sc)
            with torch.no_grad():
                one = torch.stack([estimate(model, ids, attn, c, torch.arange(rows) + 1000 * i, 1, **kw)
                                   for i in range(seeds_n)])
                four = torch.stack([estimate(model, ids, attn, c, torch.arange(rows) + 1000 * i, 4, **kw)
                                    for i in range(seeds_n // 4)])
                other = torch.stack([estimate(perturbed, ids, attn, c, torch.arange(rows) + 1000 * i, 1, **kw)
                                     for i in range(seeds_n)])
            coupled = (other - one).std(0).mean().item()
            independent = (other.roll(1, 0) - one).std(0).mean().item()
            with torch.no_grad():
                forward = timed(lambda kw=kw: estimate(model, ids, attn, c, torch.arange(rows), 1, **kw), repeats)
            backward = timed(lambda kw=kw: estimate(model, ids, attn, c, torch.arange(rows), 1, **kw).sum().backward(),
                             repeats)
            model.zero_grad(set_to_none=True)
            print(f"{estimator:>9} {sc:>9} | {one.mean().item():9.2f} {one.std(0).mean().item():8.2f} "
                  f"{four.std(0).mean().item():8.2f} | {coupled:9.3f} {independent:8.2f} | {forward * 1e3:7.1f} "
                  f"{backward * 1e3:10.1f}")
    seeds = torch.arange(rows)
    with torch.no_grad():
        naive = timed(lambda: recipe_calls(model, ids, attn, c, seeds), repeats)
        ours = timed(lambda: estimate(model, ids, attn, c, seeds, 1), repeats)
    print(f"training/none forward: shared encoder {ours * 1e3:.1f} ms vs the recipe's call per canvas "
          f"{naive * 1e3:.1f} ms")
    positions = 16 if args.quick else 64
    print(f"per-position terms at vocabulary 262144, {positions} positions:")
    head_cost(262144, positions, repeats)


if __name__ == "__main__":
    main()
