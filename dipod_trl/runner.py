"""One training entry point for every task: `examples/<task>.py` are thin wrappers around `main(task)`.

TRL script style: `TrlParser` over (`ScriptArguments`, `DiPODConfig`, `ModelConfig`), `--config recipe.yaml` with
CLI overrides, e.g.

    accelerate launch --config_file recipes/accelerate/zero2.yaml examples/gsm8k.py --config recipes/gsm8k/fpo_dipod.yaml

Your own task, without touching the library (`python -m dipod_trl.runner` or `accelerate launch -m dipod_trl.runner`):

    python -m dipod_trl.runner --task my_package.my_module:MyTask ...         # a dipod_trl.tasks.Task (or file.py:MyTask)
    python -m dipod_trl.runner --dataset_path data.jsonl --reward_funcs my_module.fn ...   # plain TRL rewards
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from trl import ModelConfig, TrlParser
from trl.trainer.utils import get_peft_config, get_quantization_config

from .checkpoints import CheckpointError
from .cli import debug_requested, user_errors
from .config import DiPODConfig
from .guard import NonFiniteTrainingError
from .models import check_model_path, gathered_parameters
from .tasks import DatasetTask, Task, get_task, load_reward, set_math_verify_timeout, task_names
from .trainer import DiPODTrainer


@dataclass
class ScriptArguments:
    """Arguments of the example scripts (data and smoke-run helpers); training ones live in DiPODConfig."""

    task: str | None = field(
        default=None,
        metadata={"help": "Task (set by the entry point): " + ", ".join(task_names()) + ", an installed "
                  "'dipod_trl.tasks' entry point, or your own Task as package.module:MyTask / path/to/file.py:MyTask."},
    )
    dataset_path: str | None = field(
        default=None,
        metadata={"help": "Local jsonl/json/csv/parquet file (or hub id) in the task's format; None: the task's "
                  "default. Without --task: rows with a `prompt` (or `question`) column plus the reward columns."},
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Reward functions replacing the task's, as package.module:fn, path/to/file.py:fn or a "
                  "built-in reward name; TRL signature f(prompts, completions, **columns) -> list[float]. Weights: "
                  "--reward_weights (default 1.0 each)."},
    )
    math_verify_timeout: float | None = field(
        default=None,
        metadata={"help": "Seconds one math-verify check may take before its completion scores 0 (and is counted); "
                  "default 0.5, or $DIPOD_MATH_VERIFY_TIMEOUT."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on (hub datasets)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N examples."})
    create_tiny_model: bool = field(
        default=False,
        metadata={"help": "Smoke runs: if model_name_or_path does not exist, write a tiny random diffusion LM there."},
    )
    write_rank_checksums: bool = field(
        default=False,
        metadata={"help": "Debug distributed runs: each rank writes rank<R>.json (weight checksum, rewards seen)."},
    )


def resolve_task(task: str | Task | None, reward_funcs: list[str] | None = None) -> tuple[Task, list, list | None]:
    """``(task, reward_funcs, reward_weights)``: ``task`` (a name, ``module:Class`` or an instance) with its own
    rewards, or with ``reward_funcs`` (specs, weights left to ``--reward_weights``) in their place; without a task,
    a `DatasetTask` (``--dataset_path`` rows) scored by ``reward_funcs``."""
    funcs = [load_reward(spec) for spec in reward_funcs or []]
    if task is None and not funcs:
        raise ValueError("no task: pass --task NAME (one of " + ", ".join(task_names()) + ") or "
                         "package.module:MyTask, or --dataset_path data.jsonl --reward_funcs package.module:fn")
    task = get_task(task) if task is not None else DatasetTask(funcs)
    return (task, funcs, None) if funcs else (task, task.reward_funcs, task.reward_weights)


def model_init_kwargs(model_args: ModelConfig) -> dict:
    """from_pretrained kwargs from TRL's ModelConfig: dtype, attention, revision and (opt-in) 4-bit loading."""
    kwargs = {"revision": model_args.model_revision, "attn_implementation": model_args.attn_implementation}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = getattr(torch, model_args.dtype)
    if model_args.load_in_4bit or model_args.load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "load_in_4bit/load_in_8bit need bitsandbytes and a CUDA GPU: `pip install bitsandbytes`, or drop "
                "the flag (the recipes' QLoRA setting) and train LoRA on a bf16 model."
            ) from err
        kwargs["quantization_config"] = get_quantization_config(model_args)
        kwargs["device_map"] = {"": PartialState().local_process_index}  # one full copy per process
    return {k: v for k, v in kwargs.items() if v is not None}


def weight_checksum(model: torch.nn.Module) -> str:
    """SHA-256 over the trainable parameters (identical across ranks after a correct distributed run)."""
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def main(
    task: str | Task | None = None,
    argv: list[str] | None = None,
    callbacks: list | None = None,
    tiny_model_builder: Callable[[str], object] | None = None,
) -> DiPODTrainer:
    """Parse the command line (or `argv`), train, save; returns the trainer. `callbacks` go to the Trainer.

    `task` (a name, ``module:Class`` or a Task) overrides ``--task``. `tiny_model_builder(dir)` writes the random
    model of ``--create_tiny_model`` smoke runs (the example scripts pass ``examples/tiny.py``'s ``save_tiny``).
    """
    trainer, training_args, write_checksums = build_trainer(task, argv, callbacks, tiny_model_builder)
    train_and_save(trainer, training_args, write_checksums)
    return trainer


def cli(task: str | Task | None = None, tiny_model_builder: Callable[[str], object] | None = None,
        recipes: str | os.PathLike | None = None) -> None:
    """Command-line entry point of the example scripts: `main` with one-line errors (exit status 2; tracebacks with
    ``--debug`` or ``DIPOD_DEBUG=1``). With no arguments at all, runs the paper's recipe ``recipes/fpo_dipod.yaml``
    where this machine can (CUDA), and otherwise says why and names the offline command."""
    debug, argv = debug_requested(None)
    with user_errors(debug):
        if recipes is not None and not argv:
            argv = headline_arguments(Path(recipes), sys.argv[0])
        trainer, training_args, write_checksums = build_trainer(task, argv, None, tiny_model_builder)
    try:
        with user_errors(debug, catch=(CheckpointError, NonFiniteTrainingError)):  # other failures keep the traceback
            train_and_save(trainer, training_args, write_checksums)
    finally:  # a multi-process run ends by destroying its process group, not in the interpreter's teardown (where
        # gloo's threads can abort the process: "terminate called without an active exception", seen under load)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def headline_arguments(recipes: Path, script: str) -> list[str]:
    """``--config <recipes>/fpo_dipod.yaml`` when a CUDA GPU is there; otherwise a `ValueError` naming the offline
    command (the paper's recipe loads LLaDA-8B-Instruct in bf16/4-bit from the Hub)."""
    paper, offline = recipes / "fpo_dipod.yaml", recipes / "tiny_cpu.yaml"
    if not offline.exists():
        offline = recipes.parent / "gsm8k" / "tiny_cpu.yaml"
    offline_command = f"python {script} --config {offline}"
    if not torch.cuda.is_available():
        raise ValueError(f"with no arguments this runs the paper's recipe {paper} (LLaDA-8B-Instruct from the Hub, "
                         f"bf16 on CUDA GPUs), but this machine has no CUDA GPU. Offline on CPU: {offline_command}")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ValueError(f"with no arguments this runs the paper's recipe {paper}, which downloads "
                         f"LLaDA-8B-Instruct, but HF_HUB_OFFLINE is set. Offline: {offline_command}")
    return ["--config", str(paper)]


def build_trainer(
    task: str | Task | None, argv: list[str] | None, callbacks: list | None,
    tiny_model_builder: Callable[[str], object] | None,
) -> tuple[DiPODTrainer, DiPODConfig, bool]:
    """Everything before training: parse, resolve the task, write a tiny model if asked, load data and model."""
    parser = TrlParser((ScriptArguments, DiPODConfig, ModelConfig))
    parser.error = _argument_error  # one line naming the argument, not argparse's 200-line usage
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    task, reward_funcs, reward_weights = resolve_task(task if task is not None else script_args.task,
                                                     script_args.reward_funcs)
    if script_args.math_verify_timeout is not None:
        set_math_verify_timeout(script_args.math_verify_timeout)
    model_path = model_args.model_name_or_path or "GSAI-ML/LLaDA-8B-Instruct"
    if script_args.create_tiny_model and not os.path.exists(model_path):
        if tiny_model_builder is None:
            raise ValueError(f"--create_tiny_model: {model_path} does not exist and no tiny-model builder was given; "
                             f"run an examples/ script, or write one first with `python examples/tiny.py {model_path}`")
        with PartialState().main_process_first():
            if not os.path.exists(model_path):
                tiny_model_builder(model_path)
    training_args.model_init_kwargs = model_init_kwargs(model_args)

    dataset = task.load(script_args.dataset_path, split=script_args.dataset_split)
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    if training_args.reward_weights is None:
        training_args.reward_weights = reward_weights

    from transformers import AutoTokenizer

    check_model_path(model_path)
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    trainer = DiPODTrainer(
        model=model_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
    return trainer, training_args, script_args.write_rank_checksums


def _argument_error(message: str):
    raise ValueError(f"{message} (all options: --help)")


def train_and_save(trainer: DiPODTrainer, training_args: DiPODConfig, write_checksums: bool = False) -> None:
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if write_checksums:
        _write_rank_summary(trainer)


def _write_rank_summary(trainer: DiPODTrainer) -> None:
    rank = trainer.accelerator.process_index
    model = trainer.accelerator.unwrap_model(trainer.model)
    with gathered_parameters(model):  # ZeRO-3 shards: hash the whole weights, not this rank's slice
        checksum = weight_checksum(model)
    summary = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "global_step": trainer.state.global_step,
        "weights_sha256": checksum,
        "rewards_seen": {k: list(v) for k, v in trainer._logs["rewards"].items()},
    }
    with open(os.path.join(trainer.args.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    cli()
