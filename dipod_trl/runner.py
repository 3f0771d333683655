"""One training entry point for every task: `examples/<task>.py` are thin wrappers around `main(task)`.

TRL script style: `TrlParser` over (`ScriptArguments`, `DiPODConfig`, `ModelConfig`), `--config recipe.yaml` with
CLI overrides, e.g.

    accelerate launch --config_file recipes/accelerate/zero2.yaml examples/gsm8k.py --config recipes/gsm8k/fpo_dipod.yaml
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from trl import ModelConfig, TrlParser
from trl.trainer.utils import get_peft_config, get_quantization_config

from . import data, rewards
from .config import DiPODConfig
from .models import gathered_parameters
from .tiny import save_tiny
from .trainer import DiPODTrainer

TASKS = ("gsm8k", "math500", "countdown", "sudoku")


@dataclass
class ScriptArguments:
    """Arguments of the example scripts (data and smoke-run helpers); training ones live in DiPODConfig."""

    task: str | None = field(default=None, metadata={"help": "Task (set by the entry point): " + ", ".join(TASKS)})
    dataset_path: str | None = field(
        default=None, metadata={"help": "Local jsonl/json/csv in the task's format (offline); None uses the hub."}
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


def load_task_dataset(task: str, path: str | None, split: str = "train"):
    """The task's training dataset with a conversational `prompt` and the columns its rewards read."""
    if task == "gsm8k":
        return data.load_gsm8k(split=split, path=path)
    if task == "math500":
        return data.load_math500(path=path)
    if task == "countdown":
        return data.load_countdown(path=path) if path else data.generate_countdown(2000, seed=0)
    if task == "sudoku":
        return data.load_sudoku(path=path)
    raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}.")


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


def main(task: str | None = None, argv: list[str] | None = None, callbacks: list | None = None) -> DiPODTrainer:
    """Parse the command line (or `argv`), train, save; returns the trainer. `callbacks` go to the Trainer."""
    parser = TrlParser((ScriptArguments, DiPODConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    task = task or script_args.task
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {TASKS} (--task).")
    model_path = model_args.model_name_or_path or "GSAI-ML/LLaDA-8B-Instruct"
    if script_args.create_tiny_model and not os.path.exists(model_path):
        with PartialState().main_process_first():
            if not os.path.exists(model_path):
                save_tiny(model_path)
    training_args.model_init_kwargs = model_init_kwargs(model_args)

    dataset = load_task_dataset(task, script_args.dataset_path, script_args.dataset_split)
    if script_args.max_train_samples is not None:
        dataset = dataset.select(range(min(script_args.max_train_samples, len(dataset))))
    reward_funcs, weights = rewards.get_rewards(task)
    if training_args.reward_weights is None:
        training_args.reward_weights = weights

    from transformers import AutoTokenizer

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
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if script_args.write_rank_checksums:
        _write_rank_summary(trainer)
    return trainer


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
