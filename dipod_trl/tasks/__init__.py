"""Verifiable tasks: one module per task, one registry.

Each task module (:mod:`~dipod_trl.tasks.gsm8k`, :mod:`~dipod_trl.tasks.math500`, :mod:`~dipod_trl.tasks.countdown`,
:mod:`~dipod_trl.tasks.sudoku`) holds all of its task: instruction and prompt, loader and offline generator, reward
functions and weights, and the answer extraction and verdict that evaluation uses. Shared answer parsing is in
:mod:`~dipod_trl.tasks.parsing` (math-verify under a deadline: :mod:`~dipod_trl.tasks.math_verify_worker`), the
response format and its shaping rewards in :mod:`~dipod_trl.tasks.formats`, the interface in
:mod:`~dipod_trl.tasks.base`::

    from dipod_trl.tasks import get_task

    task = get_task("gsm8k")  # or "my_package.my_module:MyTask", "path/to/file.py:MyTask", an entry point name
    dataset = task.load(split="train")  # or task.load(path="train.jsonl")
    reward_funcs, reward_weights = task.reward_funcs, task.reward_weights
"""

from .base import DatasetTask, RewardFunc, Task, make_prompt, per_completion_reward, reward_column, safe_score
from .countdown import Countdown
from .formats import FORMAT_INSTRUCTION, soft_format_reward, strict_format_reward, xml_count_reward
from .gsm8k import GSM8K
from .math500 import Math500
from .math_verify_worker import MathVerifyUnavailable
from .math_verify_worker import get_timeout as math_verify_timeout
from .math_verify_worker import set_timeout as set_math_verify_timeout
from .math_verify_worker import timeouts as math_verify_timeouts
from .registry import ENTRY_POINT_GROUP, get_task, load_object, load_reward, register_task, task_names
from .sudoku import Sudoku

BUILTIN_TASKS = tuple(register_task(t).name for t in (GSM8K, Math500, Countdown, Sudoku))

__all__ = [
    "BUILTIN_TASKS",
    "ENTRY_POINT_GROUP",
    "FORMAT_INSTRUCTION",
    "DatasetTask",
    "MathVerifyUnavailable",
    "RewardFunc",
    "Task",
    "get_task",
    "load_object",
    "load_reward",
    "make_prompt",
    "math_verify_timeout",
    "math_verify_timeouts",
    "per_completion_reward",
    "register_task",
    "reward_column",
    "safe_score",
    "set_math_verify_timeout",
    "soft_format_reward",
    "strict_format_reward",
    "task_names",
    "xml_count_reward",
]
