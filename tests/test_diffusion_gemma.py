"""DiffusionGemma: the native family, rollouts through `generate`, and the uniform-noise likelihood estimators
(the SFT recipe's objective and UDLM's continuous-time ELBO) against the stored references and exact integrals."""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from dipod_trl import estimators
from dipod_trl.canvas_sampler import canvas_generate
from dipod_trl.families import DIFFUSION_GEMMA, family_of
from dipod_trl.families.diffusion_gemma import LORA_TARGET_REGEX
from dipod_trl.uniform_likelihood import (
    STREAM_UNIFORM_NOISE,
    STREAM_UNIFORM_TOKENS,
    UniformDraw,
    decoder_logits,
    elbo_integrand,
    encode_clean,
    uniform_corruption,
    uniform_elbo_draws,
)

PATH = Path(__file__).resolve().parents[2] / "shared" / "models" / "diffusiongemma-tiny"
EOS = [1, 106, 50]
# TRL's recipe as written (`sft_diffusion_gemma.py`): the LoRA targets and the expected modules of the tiny model
RECIPE_REGEX = (r"model\.(encoder\.language_model|decoder)\.layers\.\d+"
                r"\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)")


@pytest.fixture(scope="module")
def path() -> Path:
    if not (PATH / "reference_outputs.safetensors").is_file():
        pytest.skip(f"{PATH} is not available")
    return PATH


@pytest.fixture(scope="module")
def ref(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "reference_outputs.safetensors"))


@pytest.fixture(scope="module")
def model(path):
    from dipod_trl.models import load_diffusion_model

    return load_diffusion_model(str(path)).eval()


@pytest.fixture()
def one_thread():  # the references were computed on one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------ family, loading
def test_native_loading_and_chat_template(model, path):
    from transformers import AutoTokenizer, DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    assert type(model) is DiffusionGemmaForBlockDiffusion and family_of(model.config) is DIFFUSION_GEMMA
    assert DIFFUSION_GEMMA.block_size_of(model.config) == model.config.canvas_length == 16
    assert DIFFUSION_GEMMA.attention == "encoder_decoder" and DIFFUSION_GEMMA.noise == "uniform"
    assert DiffusionGemmaConfig not in MODEL_FOR_CAUSAL_LM_MAPPING  # not registered where transformers refuses it
    assert MODEL_MAPPING[DiffusionGemmaConfig].__name__ == "DiffusionGemmaModel"  # transformers' own, untouched
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text.startswith("<bos><|turn>user") and text.endswith("<|turn>model\n")


def test_lora_preset_is_the_recipes(model):
    from peft import LoraConfig, get_peft_model

    names = [n for n, _ in model.named_modules()]
    recipe = {n for n in names if re.fullmatch(RECIPE_REGEX, n)}
    assert len(recipe) == 26  # 2 sides x (7 + 6: the full-attention layer has no v_proj)
    assert {n for n in names if re.fullmatch(DIFFUSION_GEMMA.native_lora_targets(None), n)} == recipe
    assert {n for n in names if re.fullmatch(LORA_TARGET_REGEX, n)} == recipe
    scoped = DIFFUSION_GEMMA.native_lora_targets(["q_proj", "up_proj"])
    assert {n for n in names if re.fullmatch(scoped, n)} == {n for n in recipe if n.endswith(("q_proj", "up_proj"))}
    config = LoraConfig(r=2, target_modules=DIFFUSION_GEMMA.native_lora_targets(None))
    peft_model = get_peft_model(copy.deepcopy(model), config)
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == recipe
    ids = torch.randint(5, 40, (2, 24), generator=torch.Generator().manual_seed(0))
    lp, _, w = uniform_elbo_draws(peft_model, ids, torch.ones_like(ids), 20, torch.tensor([3, 4]), 1, fill_token_id=1,
                                  eos_token_ids=EOS)
    (lp * w).sum().backward()
    grads = {n.removeprefix("base_model.model.").split(".lora_B")[0]: 0 if p.grad is None else p.grad.abs().sum()
             for n, p in peft_model.named_parameters() if "lora_B" in n}
    # The decoder reads only the encoder's keys and values: the encoder's last layer contributes its k_proj (its
    # values are its keys); its queries, output projection and MLP get no gradient from the diffusion terms.
    last = "model.encoder.language_model.layers.1."
    frozen = {last + m for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                 "mlp.down_proj")}
    assert {n for n, g in grads.items() if g == 0} == frozen


# ------------------------------------------------------------------------------------------------------ sampling
def test_canvas_generate_reproduces_generate(model, ref, one_thread):
    def gen(ids, mask, seed=0, eos=EOS, **kw):
        torch.manual_seed(seed)
        return canvas_generate(model, ids, mask, eos_token_ids=eos, pad_token_id=0, **kw)

    ids, mask, greedy = ref["gen_input_ids"], ref["gen_attention_mask"], dict(t_min=1e-4, t_max=2e-4)
    assert torch.equal(gen(ids, mask, gen_length=32, **greedy), ref["gen_greedy_sequences"][:, 29:])
    assert torch.equal(gen(ids, mask, gen_length=32), ref["gen_sampled_sequences"][:, 29:])
    eos = gen(ids, mask, gen_length=48, eos=[12], **greedy)  # both rows end in canvas 0: the rest is padding
    assert eos.shape == (2, 48) and torch.equal(eos[:, :16], ref["gen_eos_sequences"][:, 29:])
    assert (eos[:, 16:] == 0).all()
    short = gen(ids, mask, gen_length=20, **greedy)  # not a whole number of canvases: 2 written, 20 kept
    assert torch.equal(short, ref["gen_greedy_sequences"][:, 29:49])
    settings = dict(t_min=0.3, t_max=0.9, max_denoising_steps=4)  # batch of one, unpadded: model.generate itself
    torch.manual_seed(5)
    expected = model.generate(ids[1:], max_new_tokens=16, **settings).sequences[:, 29:]
    assert torch.equal(gen(ids[1:], None, seed=5, gen_length=16, **settings), expected)


@pytest.mark.parametrize("setting", [{"temperature": 0.7}, {"do_sample": True}, {"top_k": 5}, {"top_p": 0.9},
                                     {"generator": torch.Generator()}, {"steps": 4}])
def test_canvas_generate_refuses_ignored_settings(setting):
    with pytest.raises(ValueError, match=next(iter(setting))):
        canvas_generate(None, torch.zeros(1, 2, dtype=torch.long), None, gen_length=4, eos_token_ids=EOS,
                        pad_token_id=0, **setting)


# ------------------------------------------------------------------------------------------- canvas layout, (a)
def test_decoder_logits_reproduce_the_recipe_forward(model, ref, one_thread):
    ids, mask, start, canvas = (ref[k] for k in ("train_input_ids", "train_attention_mask", "train_encoder_len",
                                                 "train_decoder_input_ids"))
    with torch.no_grad():
        cache = encode_clean(model, ids, mask)
        rows = torch.arange(2)
        plain = decoder_logits(model, cache, mask, rows, start, canvas)
        conditioned = decoder_logits(model, cache, mask, rows, start, canvas, plain)
        gated = decoder_logits(model, cache, mask, rows, start, canvas, plain, ref["train_self_conditioning_mask"])
    assert torch.allclose(plain, ref["train_logits_no_sc"], atol=1e-4)
    assert torch.allclose(conditioned, ref["train_logits_sc"], atol=1e-4)
    assert torch.allclose(gated, ref["train_logits_sc_masked"], atol=1e-4)
    loss = F.cross_entropy(gated.flatten(0, 1), ref["train_diffusion_target"].flatten())
    assert abs(loss.item() - ref["train_diffusion_loss"].item()) < 1e-4


def test_decoder_logits_see_what_generate_sees(model, ref, one_thread):
    """First canvas: `generate`'s first decoder call; a sliding window shorter than the prefix: the keys of
    generate's incremental cache (prompt prefill, then one encoder call per canvas)."""
    from transformers import AutoConfig, DiffusionGemmaForBlockDiffusion, DynamicCache

    seq = ref["gen_greedy_sequences"]
    mask = torch.cat([ref["gen_attention_mask"], torch.ones(2, 32, dtype=torch.long)], 1)
    with torch.no_grad():
        step1 = decoder_logits(model, encode_clean(model, seq, mask), mask, torch.arange(2), torch.full((2,), 29),
                               ref["gen_greedy_step1_decoder_input_ids"])
    assert torch.allclose(step1, ref["gen_greedy_step1_logits"], atol=1e-4)
    config = AutoConfig.from_pretrained(str(PATH))
    config.text_config.sliding_window = 8
    small = DiffusionGemmaForBlockDiffusion.from_pretrained(str(PATH), config=config).eval()
    cache, full, encoder = DynamicCache(config=small.config), encode_clean(small, seq, mask), small.model.encoder
    for lo, end in ((0, 29), (29, 45)):
        canvas, pos, seen = torch.randint(0, 512, (2, 16)), torch.arange(lo, end)[None], mask[:, :end].bool()
        with torch.no_grad():
            masks = encoder.create_masks_for_generate(small.config, torch.empty(2, end - lo, 0), seen, cache, pos)
            encoder(input_ids=seq[:, lo:end], attention_mask=masks, cache=cache, position_ids=pos)
            positions = (end + torch.arange(16))[None]
            expected = small(cache=cache, decoder_input_ids=canvas, decoder_position_ids=positions,
                             decoder_attention_mask=F.pad(seen, (0, 16), value=True)).logits
            got = decoder_logits(small, full, mask, torch.arange(2), torch.full((2,), end), canvas)
        assert torch.allclose(got, expected, atol=1e-4)


def _recipe_batch(ref):
    """The reference conversations as trainer rows: prompts left-padded to a common end, responses after it."""
    ids, mask = ref["train_input_ids"], ref["train_attention_mask"]
    prefix = [82, 118]  # train_encoder_len - train_block_idx * 16
    prompts = [ids[b, :prefix[b]][mask[b, :prefix[b]].bool()] for b in range(2)]
    responses = [ids[b, prefix[b]:] for b in range(2)]
    p, c = max(map(len, prompts)), max(map(len, responses))
    rows = [torch.cat([F.pad(q, (p - len(q), 0)), F.pad(r, (0, c - len(r)))]) for q, r in zip(prompts, responses)]
    attn = [torch.cat([torch.arange(p) >= p - len(q), torch.arange(c) < len(r)]) for q, r in zip(prompts, responses)]
    return torch.stack(rows), torch.stack(attn).long(), c


def test_training_estimator_is_the_recipe_loss(model, ref, one_thread):
    """The recipe's draws placed on the grid: row 0's canvas 1, row 1's canvas 0 (its 3 fill positions folded into
    its last response token, `\\n`, which ends the SFT response)."""
    ids, attn, c = _recipe_batch(ref)
    t = torch.full((1, 2, 4), 0.5, dtype=torch.float64)
    corrupt = torch.zeros(1, 2, 64, dtype=torch.bool)
    tokens = torch.zeros(1, 2, 64, dtype=torch.long)
    for b, k in ((0, 1), (1, 0)):
        t[0, b, k] = ref["train_t"][b, 0]
        corrupt[0, b, 16 * k:16 * k + 16] = ref["train_corrupt"][b]
        tokens[0, b, 16 * k:16 * k + 16] = ref["train_decoder_input_ids"][b]
    draw = UniformDraw(t, corrupt, tokens)
    common = dict(fill_token_id=1, eos_token_ids=[5], draw=draw)
    with torch.no_grad():
        plain, masks, weights = uniform_elbo_draws(model, ids, attn, c, torch.zeros(2), 1, **common)
        sc, _, _ = uniform_elbo_draws(model, ids, attn, c, torch.zeros(2), 1, self_conditioning="two_pass", **common)
    assert torch.equal(masks[0], attn[:, -c:].bool()) and torch.equal(weights, masks.float())
    expected = ref["train_logits_no_sc"].log_softmax(-1).gather(-1, ref["train_diffusion_target"][..., None])[..., 0]
    assert torch.allclose(plain[0, 0, 16:32], expected[0], atol=1e-4)
    assert abs(plain[0, 1].sum() - expected[1].sum()) < 1e-3  # 13 response tokens + 3 folded fill positions
    loss = -(sc[0, 0, 16:32].sum() + plain[0, 1].sum()) / 32  # row 0 self-conditioned, row 1 not (the stored mask)
    assert abs(loss.item() - ref["train_diffusion_loss"].item()) < 1e-4


# ------------------------------------------------------------------------------------------------ (b), the ELBO
def udlm_transcription(logits, x0, xt, t):
    """UDLM's continuous-time diffusion loss (Schiff et al. 2024; `alpha_t = 1 - t`, `alpha_t' = -1`), written as in
    its release (one-hot `x_bar`), in float64; returned as the log-likelihood integrand (minus the loss)."""
    n = logits.size(-1)
    model_output = logits.double().log_softmax(-1)
    alpha_t = (1.0 - t.double())[..., None]
    x_bar = n * alpha_t * F.one_hot(x0, n).double() + 1 - alpha_t
    x_bar_theta = n * alpha_t * model_output.exp() + 1 - alpha_t
    coeff = -1.0 / (n * alpha_t)
    x_bar_zt, x_bar_theta_zt = x_bar.gather(-1, xt[..., None]), x_bar_theta.gather(-1, xt[..., None])
    term1 = n / x_bar_zt - n / x_bar_theta_zt
    term2 = ((x_bar / x_bar_zt) * (x_bar_theta_zt.log() - x_bar_theta.log() + x_bar.log() - x_bar_zt.log())).sum(-1)
    return -(coeff * (term1 - term2[..., None])).squeeze(-1)


@pytest.mark.parametrize("scale", [0.1, 3.0, 10.0])
def test_elbo_integrand_is_udlms_formula(scale):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 16, 512, generator=g) * scale
    x = torch.randint(0, 512, (4, 16), generator=g)
    logits.scatter_add_(-1, x[..., None], torch.full((4, 16, 1), 2 * scale))
    z = torch.where(torch.rand(4, 16, generator=g) < 0.5, x, torch.randint(0, 512, (4, 16), generator=g))
    weights = torch.randn(4, 16, generator=g)
    for value in (1e-4, 1e-2, 0.3, 0.9, 1 - 1e-4):
        t = torch.full((4, 1), value)
        expected = udlm_transcription(logits, x, z, t)
        assert torch.allclose(elbo_integrand(logits, x, z, t).double(), expected, rtol=2e-6, atol=1e-5)
        if value in (1e-2, 0.3, 0.9):  # the custom backward of the vocabulary sums against float64 autograd
            ours = logits.clone().requires_grad_()
            (elbo_integrand(ours, x, z, t) * weights).sum().backward()
            theirs = logits.double().requires_grad_()
            (udlm_transcription(theirs, x, z, t) * weights).sum().backward()
            assert torch.allclose(ours.grad.double(), theirs.grad, atol=1e-5 * theirs.grad.abs().max().item())


def _exact_per_t(logit_fn, clean, vocab):
    """`t -> E_{z ~ q_t(.|clean)} [sum_i g_i(t, z)]` for one canvas, every z enumerated (tiny vocabulary)."""
    n = clean.numel()
    zs = torch.cartesian_prod(*[torch.arange(vocab)] * n).view(-1, n)
    logits = logit_fn(zs)
    same = (zs == clean).double()

    def per_t(t: float) -> float:
        g = elbo_integrand(logits, clean.expand_as(zs), zs, torch.full((len(zs), 1), t)).double().sum(1)
        q = ((1 - t + t / vocab) * same + (t / vocab) * (1 - same)).prod(1)
        return float((q * g).sum())

    return per_t


def _exact_elbo(logit_fn, clean, vocab, lo=0.0, hi=1.0):
    """The integral over `(lo, hi)`: 32-node Gauss-Legendre on pieces refined geometrically towards t = 0 (the
    integrand grows like log(1 / t) there; below 1e-14 is left out)."""
    per_t = _exact_per_t(logit_fn, clean, vocab)
    cuts = [max(lo, 1e-14), *[10.0 ** -k for k in range(13, 0, -1)], *[k / 10 for k in range(2, 10)], hi]
    cuts = sorted({x for x in cuts if max(lo, 1e-14) <= x <= hi})
    nodes, weights = np.polynomial.legendre.leggauss(32)
    total = 0.0
    for a, b in zip(cuts[:-1], cuts[1:]):
        total += sum(w * (b - a) / 2 * per_t((b - a) / 2 * x + (a + b) / 2) for x, w in zip(nodes, weights))
    return total


class StubDiffusionGemma(nn.Module):
    """DiffusionGemma's call interface around `logit_fn(canvas ids) -> logits`, one cached layer of dummy keys."""

    def __init__(self, logit_fn, vocab: int, canvas: int):
        super().__init__()
        self.logit_fn = logit_fn
        text = SimpleNamespace(vocab_size=vocab, sliding_window=1024, layer_types=["full_attention"],
                               _attn_implementation="sdpa")
        self.config = SimpleNamespace(canvas_length=canvas, get_text_config=lambda: text)
        self.dtype = torch.float32

    def forward(self, input_ids=None, cache=None, decoder_input_ids=None, **kwargs):
        if input_ids is not None:  # the encoder call: fill the cache, no logits needed
            keys = torch.zeros(len(input_ids), 1, input_ids.size(1), 1)
            cache.update(keys, keys, 0)
            return SimpleNamespace(logits=None)
        return SimpleNamespace(logits=self.logit_fn(decoder_input_ids))


def _context_logits(vocab: int, canvas: int):
    g = torch.Generator().manual_seed(1)
    own, other = torch.randn(canvas, vocab, vocab, generator=g) * 2, torch.randn(vocab, vocab, generator=g)
    return lambda z: own[torch.arange(canvas), z] + other[z.flip(-1)]  # each position sees itself and the other


@pytest.mark.parametrize("kind", ["uniform", "context"])
def test_elbo_is_unbiased_for_its_integral(kind):
    """Uniform predictor: the integral is exactly -C log V. Both: at a fixed noise level the mean over corruptions
    is the exact expectation, and the MC mean over seeds (t ~ U(eps, 1 - eps), weight 1 - 2 eps) the integral over
    (eps, 1 - eps) of the exact per-t expectation, within 4 standard errors."""
    vocab, canvas, eps, n = 3, 2, 1e-4, 20000
    fn = (lambda z: torch.zeros(*z.shape, vocab)) if kind == "uniform" else _context_logits(vocab, canvas)
    clean = torch.tensor([2, 0])
    if kind == "uniform":
        assert abs(_exact_elbo(fn, clean, vocab) + canvas * math.log(vocab)) < 1e-6
    stub = StubDiffusionGemma(fn, vocab, canvas)
    ids = torch.cat([torch.ones(n, 3, dtype=torch.long), clean.expand(n, -1)], 1)
    common = dict(fill_token_id=0, eos_token_ids=[0], estimator="elbo", eps=eps)

    def check(estimates: torch.Tensor, exact: float) -> None:
        se = estimates.double().std() / math.sqrt(estimates.numel())
        assert abs(estimates.double().mean() - exact) < 4 * se, (estimates.mean(), exact, se)

    g = torch.Generator().manual_seed(0)
    for t in (0.05, 0.5, 0.95):
        draw = UniformDraw(torch.full((1, n, 1), t, dtype=torch.float64), torch.rand(1, n, canvas, generator=g) < t,
                           torch.randint(0, vocab, (1, n, canvas), generator=g))
        lp, _, w = uniform_elbo_draws(stub, ids, torch.ones_like(ids), canvas, torch.zeros(n), 1, draw=draw, **common)
        check(lp.sum(-1).flatten(), _exact_per_t(fn, clean, vocab)(t))
    lp, _, w = uniform_elbo_draws(stub, ids, torch.ones_like(ids), canvas, torch.arange(n), 2, **common)
    check((lp * w).sum(-1).flatten(), _exact_elbo(fn, clean, vocab, eps, 1 - eps))


# ----------------------------------------------------------------------------------------------------- coupling
def test_draws_are_pure_functions_of_the_seeds():
    assert {STREAM_UNIFORM_NOISE, STREAM_UNIFORM_TOKENS}.isdisjoint(
        {estimators.STREAM_ELBO, estimators.STREAM_ONE_STEP, estimators.STREAM_DIAGNOSTICS,
         estimators.STREAM_ITERATION})
    seeds = torch.tensor([7, 8, 9, 10])
    order = torch.tensor([2, 0, 3, 1])
    a, b = uniform_corruption(seeds, 3, 16, 512, 4), uniform_corruption(seeds[order], 3, 16, 512, 4)
    for x, y in zip(a, b):
        assert torch.equal(x[:, order], y)
    assert 1e-4 <= a.t.min() and a.t.max() <= 1 - 1e-4 and a.tokens.max() < 512
    assert not torch.equal(a.corrupt[0], a.corrupt[1]) and not torch.equal(a.tokens[:, 0], a.tokens[:, 1])


@pytest.mark.parametrize("estimator", ["training", "elbo"])
def test_estimates_are_coupled_across_batches(model, estimator):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (3, 30), generator=g)
    ids[torch.isin(ids, torch.tensor(EOS))] = 7  # EOS only where placed below
    ids[1, 16], ids[2, 27] = 106, 1  # completion rows ending at 7 and 18 tokens, the last one at 20
    attn = torch.ones_like(ids)
    attn[0, :3], attn[1, 17:], attn[2, 28:] = 0, 0, 0
    seeds, order = torch.tensor([11, 22, 33]), torch.tensor([2, 0, 1])
    kwargs = dict(fill_token_id=1, eos_token_ids=EOS, estimator=estimator, self_conditioning="two_pass")
    with torch.no_grad():
        old = uniform_elbo_draws(model, ids, attn, 20, seeds, 3, **kwargs)
        new = uniform_elbo_draws(model, ids, attn, 20, seeds, 3, **kwargs)
        shuffled = uniform_elbo_draws(model, ids[order], attn[order], 20, seeds[order], 3, **kwargs)
        dropped = uniform_elbo_draws(model, ids, attn, 20, seeds, 3, **{**kwargs, "fill": "drop"})
    seq = [(lp * w).mean(0).sum(-1) for lp, _, w in (old, new, shuffled)]
    assert torch.equal(torch.exp(seq[1] - seq[0]), torch.ones(3))  # same rows, same seeds: ratio exactly 1
    assert torch.allclose(seq[2], seq[0][order], atol=1e-4)
    assert torch.equal(old[1][0], attn[:, -20:].bool())  # masks: the completion up to its first EOS
    last = torch.tensor([6, 17])  # the fill is folded into the EOS position; elsewhere fold = drop
    keep = torch.ones(3, 20, dtype=torch.bool)
    keep[1, 6] = keep[2, 17] = False
    assert torch.equal(old[0][:, keep], dropped[0][:, keep])
    assert (old[0][:, [1, 2], last] != dropped[0][:, [1, 2], last]).all()
    assert torch.equal(old[0][:, 0], dropped[0][:, 0])  # truncated row (no EOS): nothing to fold
