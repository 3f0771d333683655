"""The task registry: the single list of tasks, and how a name, an entry point or ``module:Class`` becomes a Task.

`get_task` accepts, in this order:

1. a :class:`Task` instance (returned as is);
2. a registered name (the built-ins ``gsm8k``, ``math500``, ``countdown``, ``sudoku``, or `register_task`'s);
3. the name of an installed entry point in the group ``dipod_trl.tasks`` (``[project.entry-points."dipod_trl.tasks"]
   my_task = "my_package.tasks:MyTask"``);
4. ``package.module:Name`` or ``path/to/file.py:Name``, where ``Name`` is a Task subclass or instance.

`load_reward` resolves ``--reward_funcs`` the same way (plus bare names of the built-in rewards).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .base import RewardFunc, Task

ENTRY_POINT_GROUP = "dipod_trl.tasks"
_REGISTRY: dict[str, Task] = {}


def register_task(task: Task | type[Task], replace: bool = False) -> Task:
    """Add a task (an instance or a Task subclass, instantiated without arguments) under its ``name``."""
    task = _as_task(task, repr(task))
    if task.name in _REGISTRY and not replace and type(_REGISTRY[task.name]) is not type(task):
        raise ValueError(f"a task named {task.name!r} is already registered ({_REGISTRY[task.name]!r}); "
                         "pick another name or pass replace=True")
    _REGISTRY[task.name] = task
    return task


def task_names() -> list[str]:
    """Registered task names, then names of installed ``dipod_trl.tasks`` entry points."""
    installed = [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in _REGISTRY]
    return list(_REGISTRY) + sorted(installed)


def get_task(spec: str | Task) -> Task:
    """The Task for ``spec``: an instance, a registered or entry-point name, or ``module:Name`` / ``file.py:Name``."""
    if isinstance(spec, Task):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"a task is a name or 'module:Class', got {spec!r}; choose one of {task_names()}")
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == spec:
            return register_task(_as_task(ep.load(), f"entry point {spec!r} ({ep.value})"))
    if ":" in spec:
        return _as_task(load_object(spec), spec)
    raise ValueError(f"unknown task {spec!r}; choose one of {task_names()}, or pass your own as "
                     "'package.module:MyTask' or 'path/to/file.py:MyTask' (a dipod_trl.tasks.Task subclass)")


def load_object(spec: str) -> Any:
    """The object named by ``package.module:name``, ``path/to/file.py:name`` or ``package.module.name``."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"cannot read {spec!r}: expected 'package.module:name' or 'path/to/file.py:name'")
    if module_name.endswith(".py"):
        module = _import_file(Path(module_name))
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"cannot import {module_name!r} for {spec!r}: {e}. Is it installed or on PYTHONPATH? "
                             "(a file works too: path/to/file.py:name)") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{module_name!r} has no attribute {attr!r} (from {spec!r})") from None


def load_reward(spec: str) -> RewardFunc:
    """A reward function from a built-in reward's name (``xml_count_reward``) or ``module:fn`` / ``module.fn``."""
    if ":" not in spec and "." not in spec:
        builtin = {f.__name__: f for task in _REGISTRY.values() for f in task.reward_funcs}
        if spec not in builtin:
            raise ValueError(f"unknown reward {spec!r}: use 'package.module:function', 'path/to/file.py:function' "
                             f"or a built-in reward ({', '.join(sorted(builtin))})")
        return builtin[spec]
    func = load_object(spec)
    if not callable(func):
        raise ValueError(f"reward {spec!r} is a {type(func).__name__}, not a function "
                         "f(prompts, completions, **columns) -> list[float]")
    return func


def _import_file(path: Path) -> Any:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"task or reward file {path} not found")
    name = f"dipod_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # its sibling modules import, as when the file runs as a script
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing: dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _as_task(obj: Any, source: str) -> Task:
    if isinstance(obj, type) and issubclass(obj, Task):
        obj = obj()
    if not isinstance(obj, Task):
        raise ValueError(f"{source} is a {type(obj).__name__}, not a task: subclass dipod_trl.tasks.Task (name, "
                         "load, rewards) and point at the class or an instance")
    return obj
