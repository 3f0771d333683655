"""The paper recipes reproduce the release's runs knob by knob (table below), and the table matches the release.

`RELEASE` is read off `Astro-Eric/DiPOD-release`: `language/d1/diffu-grpo/slurm_scripts/train.yaml` and `run.sh`
(FPO with `fpo: True`, diffu-GRPO otherwise), `language/SPG/spg/slurm_scripts/train.yaml` plus the flags of
`language/SPG/spg/slurm_scripts/spg_mix/*.sbatch` (SPG), and the trainers for the likelihood conventions
(`diffu_grpo_trainer.py`: completion mask `< first EOS`, ELBO randomness stored at generation, prompt masks reseeded
per iteration with `random_masking`; `spg_trainer.py`: `block_random` masks, mask prompt, completion mask `<= first
EOS`, `~completion_mask` masked, loss weighted by completion length). Where our value differs on purpose, the README's
knob table says why; those knobs are not in `RELEASE`.
"""

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from dipod_trl import DiPODConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MIRROR = Path("/work/.mirror/Astro-Eric+DiPOD-release/repo")
TASKS = ("gsm8k", "math500", "countdown", "sudoku")

COMMON = dict(learning_rate=3e-6, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.1, max_grad_norm=0.2,
              lr_scheduler_type="constant_with_warmup", num_generations=6, max_completion_length=256, block_length=32,
              diffusion_steps=128, remasking="low_confidence", lora_r=128, lora_alpha=64, lora_dropout=0.05,
              load_in_4bit=True, seed=42, dtype="bfloat16")
D1 = dict(COMMON, per_device_train_batch_size=6, gradient_accumulation_steps=2, num_train_epochs=2, epsilon=0.5,
          beta=0.04, use_bias_correction_kl=False, temperature=0.9, score_eos=False)
FPO = dict(D1, likelihood_estimator="elbo", elbo_samples=4, mask_redraw="fixed", after_eos="visible",
           sequence_aggregation="mean", normalization="sequence", num_iterations=12)
DIFFU_GRPO = dict(D1, likelihood_estimator="one_step", p_mask_prompt=0.15, loss_type="bnpo",
                  mask_redraw="per_iteration", after_eos="masked", num_iterations=12)
SPG = dict(COMMON, likelihood_estimator="spg", elbo_masking="block_random", elbo_samples=2, p_mask_prompt=0.15,
           mask_redraw="per_iteration", sequence_aggregation="length", normalization="token", score_eos=True,
           after_eos="masked", spg_omega=0.5, spg_eubo_beta=1.5, num_iterations=4, beta=0.0, num_train_epochs=10,
           per_device_train_batch_size=6, gradient_accumulation_steps=2, temperature=0.9)


def release(task: str, run: str) -> dict:
    """The release's value of every knob of one run (`run`: fpo, fpo_dipod, spg, spg_dipod, diffu_grpo[_dipod])."""
    base = {"fpo": FPO, "spg": SPG, "diffu": DIFFU_GRPO}[run.split("_")[0]]
    values = dict(base, dipod_beta=0.05 if run.endswith("dipod") else 0.0)
    if run.startswith("fpo") and task in ("countdown", "sudoku"):
        values["num_iterations"] = 8  # the release's FPO sbatch files (`NUM_ITER`), checked below
    if run.startswith("spg") and task == "sudoku":
        values.update(spg_eubo_beta=1.0, per_device_train_batch_size=3, gradient_accumulation_steps=4, temperature=0.3)
    return values


RUNS = sorted((p.parent.name, p.stem) for p in RECIPES.glob("*/*.yaml")
              if p.parent.name in TASKS and not p.stem.startswith(("tiny", "diffusiongemma")))
DEFAULTS = {f.name: f.default for f in dataclasses.fields(DiPODConfig)}


def test_every_task_has_the_paper_runs():
    assert {(t, r) for t in TASKS for r in ("fpo", "fpo_dipod", "spg", "spg_dipod")} <= set(RUNS)
    assert {("gsm8k", "diffu_grpo"), ("gsm8k", "diffu_grpo_dipod")} <= set(RUNS)


@pytest.mark.parametrize("task,run", RUNS)
def test_recipe_matches_the_release(task, run):
    recipe = yaml.safe_load((RECIPES / task / f"{run}.yaml").read_text())
    wrong = {}
    for knob, value in release(task, run).items():
        ours = recipe.get(knob, DEFAULTS.get(knob, "<unset>"))
        if ours != value and not (isinstance(value, float) and isinstance(ours, (int, float)) and abs(ours - value) < 1e-12):
            wrong[knob] = (ours, value)
    assert not wrong, f"{task}/{run}: knob (ours, release): {wrong}"


def _show(path: str) -> str:
    return subprocess.run(["git", "-C", str(MIRROR), "show", f"HEAD:{path}"], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(not MIRROR.exists(), reason="no local mirror of the release")
def test_table_matches_the_release_files():
    d1 = yaml.safe_load(_show("language/d1/diffu-grpo/slurm_scripts/train.yaml"))
    spg_base = yaml.safe_load(_show("language/SPG/spg/slurm_scripts/train.yaml"))
    names = {"learning_rate": "learning_rate", "adam_beta2": "adam_beta2", "weight_decay": "weight_decay",
             "max_grad_norm": "max_grad_norm", "num_generations": "num_generations", "block_length": "block_length",
             "max_completion_length": "max_completion_length", "diffusion_steps": "diffusion_steps",
             "lora_r": "lora_r", "lora_alpha": "lora_alpha", "lora_dropout": "lora_dropout", "seed": "seed",
             "p_mask_prompt": "p_mask_prompt", "epsilon": "epsilon", "beta": "beta", "num_iterations": "num_iterations",
             "per_device_train_batch_size": "per_device_train_batch_size", "num_train_epochs": "num_train_epochs",
             "gradient_accumulation_steps": "gradient_accumulation_steps"}
    for ours, theirs in names.items():
        if ours in FPO:
            assert float(d1[theirs]) == pytest.approx(FPO[ours]), ours
    assert d1["fpo"] is True and d1["random_masking"] is True
    scripts = _show("language/SPG/spg/slurm_scripts/spg_mix/gsm_base_spg_mix_beta1.5_weight0.5_dipod_beta0.05.sbatch")
    flags = dict(re.findall(r"--(\w+) (\S+)", scripts))
    spg = {**spg_base, **flags, "num_iterations": re.search(r"NUM_ITER=(\d+)", scripts).group(1)}
    sbatch = {"elbo_samples": "num_t", "spg_omega": "mix_weight", "spg_eubo_beta": "eubo_beta", "beta": "beta",
              "num_iterations": "num_iterations", "per_device_train_batch_size": "per_device_train_batch_size",
              "gradient_accumulation_steps": "gradient_accumulation_steps", "p_mask_prompt": "p_mask_prompt",
              "num_train_epochs": "num_train_epochs", "learning_rate": "learning_rate"}
    for ours, theirs in sbatch.items():
        assert float(spg[theirs]) == pytest.approx(SPG[ours]), ours
    assert spg["forward_type"] == "block_random" and spg["logp_estimation"] == "mix" and spg["use_mask_prompt"] is True
    assert float(spg["dipod_beta"]) == 0.05 and spg["random_masking"] is True


@pytest.mark.skipif(not MIRROR.exists(), reason="no local mirror of the release")
@pytest.mark.parametrize("task", TASKS)
def test_fpo_runs_match_the_release_sbatch_files(task):
    """`language/d1/diffu-grpo/slurm_scripts/<task>_base_dipod_beta{0,0.05}.sbatch`: inner iterations and DiPOD beta."""
    name = {"gsm8k": "gsm", "math500": "math"}.get(task, task)
    for beta, run in (("0", "fpo"), ("0.05", "fpo_dipod")):
        script = _show(f"language/d1/diffu-grpo/slurm_scripts/{name}_base_dipod_beta{beta}.sbatch")
        recipe = yaml.safe_load((RECIPES / task / f"{run}.yaml").read_text())
        assert recipe["num_iterations"] == int(re.search(r"NUM_ITER=(\d+)", script).group(1)), (task, run)
        assert float(recipe["dipod_beta"]) == float(re.search(r"--dipod_beta (\S+)", script).group(1)), (task, run)


# Block-diffusion recipes, recipes/gsm8k/block/<model>_<run>.yaml: LLaDA2-mini (blocks of 32; LLaDA2.0 and 2.1 differ
# only by model id) and SDAR-4B (blocks of 4; SDAR-4B-Chat and TraDo-4B-Instruct likewise), four runs each.
BLOCK_RECIPES = RECIPES / "gsm8k" / "block"
BLOCK_MODELS = {  # file prefix: (trained block size, model id, the alternative id named in the header)
    "llada2_mini": (32, "inclusionAI/LLaDA2.0-mini", "inclusionAI/LLaDA2.1-mini"),
    "sdar_4b": (4, "JetLM/SDAR-4B-Chat", "Gen-Verse/TraDo-4B-Instruct"),
}
BLOCK_RUNS = ("fpo", "fpo_dipod", "spg", "spg_dipod")
BLOCK_FILES = sorted(p.name for p in BLOCK_RECIPES.glob("*.yaml"))


def _parse_like_the_example(path: Path):
    """(ScriptArguments, DiPODConfig, ModelConfig) exactly as `examples/gsm8k.py --config <path>` parses them
    (`dipod_trl.runner.build_trainer`: `TrlParser` over the three dataclasses, `parse_args_and_config`), stopping
    before the tokenizer and model are loaded. One command-line override, `--bf16 false` (a flag overrides the YAML,
    as on any command line): transformers refuses `bf16: true` on a machine without a GPU, and these recipes are
    for GPUs; that the YAML asks for bf16 is checked on the YAML itself."""
    from trl import ModelConfig, TrlParser

    from dipod_trl.runner import ScriptArguments

    parser = TrlParser((ScriptArguments, DiPODConfig, ModelConfig))
    return parser.parse_args_and_config(args=["--config", str(path), "--bf16", "false"])


def test_block_recipes_have_the_four_runs_per_model():
    assert BLOCK_FILES == sorted(f"{m}_{r}.yaml" for m in BLOCK_MODELS for r in BLOCK_RUNS)


@pytest.mark.parametrize("name", BLOCK_FILES)
def test_block_recipe_parses_and_fits_the_block_model(name):
    from trl.trainer.utils import get_peft_config

    from dipod_trl.runner import model_init_kwargs, resolve_task

    path = BLOCK_RECIPES / name
    model, run = next((m, name[len(m) + 1:-5]) for m in BLOCK_MODELS if name.startswith(m + "_"))
    block, model_id, alternative = BLOCK_MODELS[model]
    text = path.read_text()
    recipe = yaml.safe_load(text)
    script_args, args, model_args = _parse_like_the_example(path)

    assert model_args.model_name_or_path == model_id and alternative in text  # the header names the other checkpoint
    assert recipe["bf16"] is True and model_args.dtype == "bfloat16"
    assert args.dipod_beta == (0.05 if run.endswith("_dipod") else 0.0)
    assert args.likelihood_estimator == {"fpo": "elbo", "spg": "spg"}[run.split("_")[0]]
    assert args.block_length in (None, block)
    assert args.max_completion_length % block == 0
    assert args.elbo_masking != "block_random" and args.kv_cache is None  # refused / exact by default for block models
    # YAML 1.1 reads `1e-6` as a string and TrlParser passes YAML values through unconverted: numbers must be numbers.
    assert not [k for k, v in recipe.items() if isinstance(v, str) and re.fullmatch(r"[-+]?[0-9.]+(e[-+]?[0-9]+)?", v)]

    # What the trainer does next with the model's block size: diffusion_steps must split evenly over the blocks.
    args.resolve_blocks(block)
    assert args.block_length == block and args.diffusion_steps % (args.max_completion_length // block) == 0
    # ... and the rest of build_trainer before the download: task, from_pretrained kwargs, LoRA config.
    assert resolve_task("gsm8k", script_args.reward_funcs)[0].name == "gsm8k"
    assert "quantization_config" not in model_init_kwargs(model_args)
    peft = get_peft_config(model_args)
    assert (peft is not None) == model_args.use_peft
    assert peft is None or peft.target_modules is None  # the family's LoRA preset

    unsourced = [line for line in text.splitlines()
                 if line.strip() and not line.lstrip().startswith("#")
                 and not re.search(r"#\s*(source|ours):", line)]
    assert not unsourced, f"{name}: lines without a `# source:` or `# ours:` comment: {unsourced}"


@pytest.mark.parametrize("model", sorted(BLOCK_MODELS))
@pytest.mark.parametrize("estimator", ("fpo", "spg"))
def test_block_dipod_runs_differ_from_their_baseline_only_by_dipod_beta(model, estimator):
    base = yaml.safe_load((BLOCK_RECIPES / f"{model}_{estimator}.yaml").read_text())
    dipod = yaml.safe_load((BLOCK_RECIPES / f"{model}_{estimator}_dipod.yaml").read_text())
    differ = {k for k in base.keys() | dipod.keys() if base.get(k) != dipod.get(k)}
    assert differ == {"dipod_beta", "output_dir"}, differ


def test_diffusiongemma_recipe_parses_and_every_value_is_sourced():
    """recipes/gsm8k/diffusiongemma_fpo_dipod.yaml: TRL's SFT recipe's LoRA (r 16, alpha 32), FPO + DiPOD, sourced."""
    path = RECIPES / "gsm8k" / "diffusiongemma_fpo_dipod.yaml"
    text = path.read_text()
    script_args, args, model_args = _parse_like_the_example(path)
    assert model_args.model_name_or_path == "google/diffusiongemma-26B-A4B-it" and model_args.use_peft
    assert (model_args.lora_r, model_args.lora_alpha) == (16, 32)
    assert args.likelihood_estimator == "elbo" and args.dipod_beta == 0.05 and args.uniform_likelihood == "training"
    assert args.block_length is None and args.diffusion_steps is None  # the canvas and generate's steps
    args.resolve_blocks(256, default_steps=False)
    assert args.block_length == 256 and args.diffusion_steps is None
    unsourced = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
                 and not re.search(r"#\s*(source|ours):", line)]
    assert not unsourced, unsourced
