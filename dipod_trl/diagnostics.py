"""Drift diagnostics: how far the training proxy (the masked-diffusion ELBO) has fallen below the log-likelihood.

What is estimated. For a completion `x` of `L` tokens and an unmasking order `sigma` (a permutation of its
positions), the model defines the any-order autoregressive likelihood

    w_sigma(x) = prod_n p(x_sigma(n) | prompt, x_sigma(<n) revealed, every other completion token masked).

We take as the model's log-likelihood that of the uniform mixture over orders, `log p(x) = log E_sigma[w_sigma(x)]`
(the distribution of random-order unmasking; confidence-based samplers deviate from it), and the ELBO that FPO and
DiPOD train is `E_sigma[log w_sigma(x)]` (the `k ~ U{1..L}`, `L/k`-weighted form of `dipod_trl.likelihood` is the
same quantity). Their difference is `KL(uniform(sigma) || p(sigma | x))` with
`p(sigma | x) ~ w_sigma(x)`: zero iff every order gives the same likelihood, i.e. iff the conditionals are those of
one joint distribution. RL on the ELBO can drive the two apart; this module measures it:

Block-diffusion models: an order is a random order inside each block, blocks in sequence, and `w_sigma(x)` is the
product over blocks of each block's sequential unmasking given the prompt and the clean blocks before it (the block
ELBO is `E_sigma[log w_sigma(x)]` again). All blocks are unmasked in parallel: `block_size` forwards per probe.

- `drift/elbo`: the Monte-Carlo ELBO, `elbo_per_token` with `elbo_samples` fixed-seed masks, summed over the
  completion (nats per sequence, mean over the probe sequences).
- `drift/loglik`: the importance-weighted bound with `K = num_orders` uniformly random orders as proposals,
  `log (1/K) sum_k w_sigma_k(x)`, each `w_sigma_k` computed exactly by sequential unmasking. In expectation it
  equals the ELBO for `K = 1`, never decreases with `K`, stays below `log p(x)` and tends to it as `K` grows.
- `drift/gap = drift/loglik - drift/elbo`: the part of `log p(x) - ELBO` that `K` orders reveal (>= 0 in
  expectation; a single probe can be slightly negative from the ELBO's Monte-Carlo noise).
- `drift/gap_orders = drift/loglik - mean_k log w_sigma_k(x)`: the same gap against the ELBO estimated on the same
  `K` orders; >= 0 for every sequence (Jensen) and of lower variance.

Cost. A probe of `B` sequences of `L` completion tokens costs `K * L` single-sequence forwards per sequence,
run as `L` forwards of `K * B` rows (rows whose sequence is already fully revealed are skipped), plus one forward of
`elbo_samples * B` rows for the ELBO and, in the callback, `diffusion_steps` forwards of `B` rows to sample the
probe. With `L = 256`, `K = 8` that is 2048 sequence forwards per probe sequence (512x the 4 forwards of a training
step's ELBO estimate): keep `probe_size` small and `probe_every` large on real models; `batch_size` bounds the rows
per forward.

Probe completions (`DriftCallback`): by default they are regenerated at every probe from the same fixed prompts
with a generator reset to the same seed, so they are on-policy for the current model (the regime DiPOD regularises)
and two probes differ only because the model changed, not because of sampling noise. `regenerate=False` keeps the
completions drawn at train begin, measuring drift on a fixed set instead. Neither touches the trainer's random
state: training runs identically with or without the callback.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from transformers import Trainer, TrainerCallback
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.utils import pad

from .estimators import STREAM_DIAGNOSTICS, hashed_uniform, ranks_within, sample_seeds
from .likelihood import completion_logps, completion_segments, elbo_per_token
from .models import DiffusionLM
from .sampler import diffusion_generate

NO_ORDERS = ("The drift diagnostics compare the ELBO with the likelihood of unmasking orders (log E_sigma w_sigma); "
             "uniform-state diffusion (DiffusionGemma) has no unmasking order, so no such likelihood is defined and "
             "no number is reported. Train without the DriftCallback for this model.")
ORDER_OFFSET = 1 << 20  # order k uses sample index ORDER_OFFSET + k of the diagnostics stream (the ELBO uses 0, 1, ..)


def order_ranks(seeds: torch.Tensor, completion_mask: torch.Tensor, num_orders: int,
                segments: torch.Tensor | None = None) -> torch.Tensor:
    """Ranks `(K, B, C)`: position `i` of row `b` is revealed at step `rank[k, b, i]` of order `k`.

    Orders are uniformly random permutations of the valid positions (within each block, given `segments`), a pure
    function of `(seeds[b], k)`; padding positions get ranks `>= L_b` (never revealed, never scored).
    """
    valid = completion_mask.bool()
    ranks = []
    for k in range(num_orders):
        u = hashed_uniform(seeds, STREAM_DIAGNOSTICS, ORDER_OFFSET + k, valid.size(1)).masked_fill(~valid, 2.0)
        ranks.append(ranks_within(u, valid, segments))
    return torch.stack(ranks)


@torch.no_grad()
def order_log_weights(
    model: nn.Module,
    adapter: DiffusionLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    seeds: torch.Tensor,
    num_orders: int,
    batch_size: int | None = None,
) -> torch.Tensor:
    """`log w_sigma_k(x)` `(K, B)`: exact sequential unmasking of each completion along `K` seeded random orders.

    Step `n` reveals the tokens of rank `< n` and scores the token of rank `n` (in every block at once for
    block-diffusion models): `L` (or `block_size`) forwards of `K * B` rows.
    """
    if adapter.noise != "mask":
        raise ValueError(NO_ORDERS)
    c = completion_length
    valid = attention_mask[:, -c:].bool()
    segments = completion_segments(adapter, attention_mask, c)
    ranks = order_ranks(seeds, valid, num_orders, segments).flatten(0, 1)  # row k * B + b
    rows_ids, rows_attn = input_ids.repeat(num_orders, 1), attention_mask.repeat(num_orders, 1)
    rows_valid = valid.repeat(num_orders, 1)
    log_w = torch.zeros(rows_ids.size(0), device=input_ids.device)
    steps = int((ranks.masked_fill(~rows_valid, -1)).max()) + 1 if valid.any() else 0
    for n in range(steps):
        score = (ranks == n) & rows_valid
        active = score.any(dim=1)
        noise = (ranks[active] >= n) & rows_valid[active]
        logps, _ = completion_logps(model, adapter, rows_ids[active], rows_attn[active], c, noise.unsqueeze(0),
                                    score[active].unsqueeze(0), batch_size=batch_size)
        log_w[active] += logps[0].sum(dim=1)
    return log_w.view(num_orders, -1)


def iw_loglik(log_weights: torch.Tensor) -> torch.Tensor:
    """Importance-weighted bound `logsumexp_k log w_k - log K` per sequence `(B,)` from log-weights `(K, B)`."""
    return torch.logsumexp(log_weights.double(), dim=0).float() - math.log(log_weights.size(0))


@torch.no_grad()
def drift_metrics(
    model: nn.Module,
    adapter: DiffusionLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
    seeds: torch.Tensor,
    num_orders: int = 8,
    elbo_samples: int = 16,
    batch_size: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-sequence `elbo`, `loglik` (IW bound over `num_orders` orders), `gap` and `gap_orders`, each `(B,)`."""
    c = completion_length
    per_token = elbo_per_token(
        model, adapter, input_ids, attention_mask, c, seeds, elbo_samples,
        batch_size=batch_size, stream=STREAM_DIAGNOSTICS,
    )
    elbo = (per_token * attention_mask[:, -c:]).sum(dim=1)
    log_w = order_log_weights(model, adapter, input_ids, attention_mask, c, seeds, num_orders, batch_size)
    loglik = iw_loglik(log_w)
    return {"elbo": elbo, "loglik": loglik, "gap": loglik - elbo, "gap_orders": loglik - log_w.mean(dim=0)}


class DriftCallback(TrainerCallback):
    """Log `drift/elbo`, `drift/loglik`, `drift/gap` and `drift/gap_orders` of on-policy probe completions.

    Probes at train begin (step 0), every `probe_every` optimizer steps and at the last step. Each probe samples one
    completion per prompt (the first `probe_size` training prompts, or `prompts`) with the trainer's sampling
    settings and a generator reset to `seed`, and logs the means through `Trainer.log`, so they land in
    `trainer.state.log_history` (as separate records with their `step`) and in every reporter. `history` keeps them
    too. Attach it with `DriftCallback(...).attach(trainer)` or `add_drift_diagnostics(trainer, ...)`.
    """

    def __init__(
        self,
        probe_every: int = 10,
        num_orders: int = 8,
        probe_size: int = 16,
        elbo_samples: int = 16,
        prompts: list | None = None,
        regenerate: bool = True,
        seed: int = 1234,
        batch_size: int | None = None,
    ):
        if probe_every < 1 or num_orders < 1 or probe_size < 1 or elbo_samples < 1:
            raise ValueError("probe_every, num_orders, probe_size and elbo_samples must all be >= 1.")
        self.probe_every, self.num_orders, self.probe_size = probe_every, num_orders, probe_size
        self.elbo_samples, self.prompts, self.regenerate = elbo_samples, prompts, regenerate
        self.seed, self.batch_size = seed, batch_size
        self.trainer = None
        self.history: list[dict[str, float]] = []
        self._batch: tuple[torch.Tensor, torch.Tensor, int] | None = None
        self._last_step: int | None = None

    def attach(self, trainer) -> DriftCallback:
        """Bind to a `DiPODTrainer` and register with it (once); returns `self`."""
        if trainer.dllm.noise != "mask":
            raise ValueError(NO_ORDERS)
        if trainer is not self.trainer:
            self._batch, self._last_step = None, None
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def on_train_begin(self, args, state, control, **kwargs):
        self.probe()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.probe_every == 0 or state.global_step >= state.max_steps:
            self.probe()

    def probe(self) -> dict[str, float]:
        """Sample (or reuse) the probe completions, estimate the drift metrics, log and return their means."""
        trainer = self.trainer
        if trainer is None or not hasattr(trainer, "dllm"):
            raise RuntimeError("DriftCallback is not attached to a DiPODTrainer: call callback.attach(trainer).")
        step = trainer.state.global_step
        if step == self._last_step:  # already probed at this step (e.g. `train()` resumed)
            return self.history[-1]
        was_training = trainer.model.training
        trainer.model.eval()
        try:
            with (
                unwrap_model_for_generation(
                    trainer.model_wrapped, trainer.accelerator,
                    gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                ) as model,
                torch.no_grad(),
                trainer.accelerator.autocast(),
            ):
                if self._batch is None or self.regenerate:
                    self._batch = self._sample(trainer, model)
                input_ids, attention_mask, c = self._batch
                seeds = sample_seeds(self.seed, 0, 0, input_ids.size(0), device=input_ids.device)
                metrics = drift_metrics(
                    model, trainer.dllm, input_ids, attention_mask, c, seeds,
                    self.num_orders, self.elbo_samples, self.batch_size,
                )
        finally:
            trainer.model.train(was_training)
        logs = {f"drift/{name}": value.mean().item() for name, value in metrics.items()}
        # The base class's log: GRPOTrainer.log would flush (and so steal) the metrics buffered for this step. Its
        # on_log event clears `should_log`, which would cancel this step's own log record: keep the flag.
        should_log = trainer.control.should_log
        Trainer.log(trainer, dict(logs))
        trainer.control.should_log = should_log
        self._last_step = step
        self.history.append({"step": step, **logs})
        return self.history[-1]

    def _sample(self, trainer, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One completion per probe prompt, cut after its first EOS as the trainer does: `(ids, mask, C)`."""
        args, device = trainer.args, trainer.accelerator.device
        prompts = self.prompts
        if prompts is None:
            prompts = [row["prompt"] for row in itertools.islice(trainer.train_dataset, self.probe_size)]
        prompt_ids, _, _ = trainer._tokenize_prompts(list(prompts))
        pad_id = trainer._tokenizer.pad_token_id
        ids = pad([torch.tensor(p) for p in prompt_ids], padding_value=pad_id, padding_side="left").to(device)
        mask = pad([torch.ones(len(p), dtype=torch.long) for p in prompt_ids], padding_value=0, padding_side="left")
        mask = mask.to(device)
        generator = torch.Generator(device=device).manual_seed(self.seed)
        completions = diffusion_generate(
            model, trainer.dllm, ids, mask, gen_length=args.max_completion_length, block_length=args.block_length,
            steps=args.diffusion_steps, temperature=trainer.temperature, remasking=args.remasking,
            cfg_scale=args.cfg_scale, generator=generator,
        )
        is_eos = torch.isin(completions, torch.tensor(trainer.eos_token_ids, device=device))
        first = torch.where(is_eos.any(1), is_eos.int().argmax(1), completions.size(1))
        completion_mask = (torch.arange(completions.size(1), device=device) <= first.unsqueeze(1)).long()
        completions = completions.masked_fill(completion_mask == 0, pad_id)
        return torch.cat([ids, completions], 1), torch.cat([mask, completion_mask], 1), completions.size(1)


def add_drift_diagnostics(trainer, **kwargs) -> DriftCallback:
    """Create a `DriftCallback(**kwargs)`, attach it to `trainer` and return it."""
    return DriftCallback(**kwargs).attach(trainer)
