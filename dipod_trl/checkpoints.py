"""Safe resume: pick the newest complete checkpoint, refuse incomplete or damaged ones, and name the bad file.

A resumed run equals an uninterrupted one only if the checkpoint holds the weights, the optimizer and scheduler
states, the trainer state and every process's RNG state. Transformers resumes silently without the last three; here a
missing piece is an error unless the user accepts it knowingly (`resume_incomplete_checkpoint=True`). The checks
are cheap: JSON is parsed, safetensors headers are read, and pickled torch files are opened as zip archives (the
central directory sits at the end, so a file truncated by a kill -9 fails).
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from collections.abc import Sequence

from safetensors import safe_open

logger = logging.getLogger(__name__)

LATEST = ("latest", "last", "true")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors", "pytorch_model.bin",
            "pytorch_model.bin.index.json", "adapter_model.bin")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from safely."""


def resolve_resume(value: str | bool | None, output_dir: str, world_size: int = 1) -> str | None:
    """The checkpoint to resume from: `None`/`false` -> none; `latest`/`true`/`True` -> the newest complete checkpoint
    in `output_dir` (`latest` starts from scratch when there is none, so a preemptible job can always pass it;
    `true` follows Transformers and refuses); any other string is a path."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false", "none")):
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in LATEST):
        newest = newest_complete_checkpoint(output_dir, world_size)
        if newest is None:
            if isinstance(value, str) and value.strip().lower() in ("latest", "last"):
                logger.warning("resume_from_checkpoint=latest: no complete checkpoint in %s; starting from scratch.",
                               output_dir)
                return None
            raise CheckpointError(
                f"resume_from_checkpoint=true, but {output_dir!r} has no complete checkpoint-N folder. Pass a "
                "checkpoint path, or `latest` to start from scratch when there is none."
            )
        return newest
    path = str(value)
    if not os.path.isdir(path):
        raise CheckpointError(f"resume_from_checkpoint: {path!r} is not a directory (pass a checkpoint-N folder, "
                              "or `latest`).")
    return path


def newest_complete_checkpoint(output_dir: str, world_size: int = 1) -> str | None:
    """The `checkpoint-N` folder with the largest N that passes `checkpoint_problems`; others are logged."""
    if not os.path.isdir(output_dir):
        return None
    found = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT.match(name))),
                   reverse=True)
    for _, name in found:
        path = os.path.join(output_dir, name)
        problems = checkpoint_problems(path, world_size)
        if not problems:
            return path
        logger.warning("Skipping %s: %s", path, "; ".join(problems))
    return None


def checkpoint_problems(path: str, world_size: int = 1) -> list[str]:
    """What is missing or unreadable in a checkpoint folder (empty when it can be resumed exactly)."""
    return [f"{piece} is missing" for piece in missing_pieces(path, world_size)] + damaged_files(path)


def damaged_files(path: str) -> list[str]:
    """`"<file> is damaged (<error>)"` for every checkpoint file that cannot be read."""
    damaged = []
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        error = _unreadable(os.path.join(path, name))
        if error:
            damaged.append(f"{os.path.join(path, name)} is damaged ({error})")
    return damaged


def check_checkpoint(path: str, world_size: int = 1, allow_incomplete: bool = False,
                     also_required: Sequence[str] = ()) -> None:
    """Raise `CheckpointError` naming every damaged file and, unless `allow_incomplete`, every missing piece (the
    standard ones, plus `also_required` files)."""
    missing = missing_pieces(path, world_size)
    missing += [name for name in also_required if not os.path.isfile(os.path.join(path, name))]
    damaged = damaged_files(path)
    if damaged:
        raise _damaged(path, damaged)
    if missing and not allow_incomplete:
        raise CheckpointError(
            f"Cannot resume exactly from {path}: " + ", ".join(missing) + " missing, so the run would silently differ "
            "from an uninterrupted one. Resume from a complete checkpoint, or set resume_incomplete_checkpoint=True "
            "to accept it knowingly."
        )
    if missing:
        logger.warning("Resuming from %s without %s (resume_incomplete_checkpoint=True): the run will not match an "
                       "uninterrupted one.", path, ", ".join(missing))


def read_trainer_state(path: str):
    """The checkpoint's `TrainerState`; `None` when `trainer_state.json` is missing (`check_checkpoint` reports that).
    A damaged one (not JSON, not UTF-8, not a trainer state) raises `CheckpointError` naming it, like any damaged
    file."""
    from transformers import TrainerState

    file = os.path.join(path, "trainer_state.json")
    if not os.path.isfile(file):
        return None
    try:
        return TrainerState.load_from_json(file)
    except (OSError, ValueError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _damaged(path, [f"{file} is damaged ({type(error).__name__}: {error})"]) from None


def _damaged(path: str, damaged: Sequence[str]) -> CheckpointError:
    return CheckpointError(f"Cannot resume from {path}: " + "; ".join(damaged) + ". Resume from an earlier "
                           "checkpoint (or `latest`, which skips damaged ones).")


def missing_pieces(path: str, world_size: int = 1) -> list[str]:
    def has(name: str) -> bool:
        return os.path.isfile(os.path.join(path, name))

    deepspeed_tag = _deepspeed_tag(path)
    missing = []
    if not has("trainer_state.json"):
        missing.append("trainer_state.json")
    if deepspeed_tag is None and not any(has(w) for w in _WEIGHTS):
        missing.append("the model weights (model.safetensors / adapter_model.safetensors)")
    if deepspeed_tag is None and not has("optimizer.pt"):
        missing.append("optimizer.pt")
    if deepspeed_tag is not None and not any("optim_states" in f for f in os.listdir(deepspeed_tag)):
        missing.append(f"the DeepSpeed optimizer states in {deepspeed_tag}")
    if not has("scheduler.pt"):
        missing.append("scheduler.pt")
    rng = ["rng_state.pth"] if world_size <= 1 else [f"rng_state_{i}.pth" for i in range(world_size)]
    missing += [name for name in rng if not has(name)]
    return missing


def _deepspeed_tag(path: str) -> str | None:
    latest = os.path.join(path, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        tag = os.path.join(path, f.read().strip())
    return tag if os.path.isdir(tag) else None


def _unreadable(file: str) -> str | None:
    """Why `file` cannot be read, for the file types a checkpoint holds (None when fine or not checked)."""
    try:
        if file.endswith(".json"):
            with open(file) as f:
                json.load(f)
        elif file.endswith(".safetensors"):
            with safe_open(file, "pt") as f:
                f.keys()
        elif file.endswith((".pt", ".pth", ".bin")):
            with zipfile.ZipFile(file):
                pass
    except Exception as error:  # noqa: BLE001 (SafetensorError, BadZipFile, JSONDecodeError, OSError: all "damaged")
        return f"{type(error).__name__}: {error}"
    return None
