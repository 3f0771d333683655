"""Tests for dipod_trl.tasks: the registry, the Task interface, user tasks (module:Class, file.py:Class, entry points,
plain reward functions) and the custom-task example trained and evaluated end to end."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dipod_trl.evaluation import score_generations
from dipod_trl.runner import main
from dipod_trl.tasks import (
    BUILTIN_TASKS,
    DatasetTask,
    Task,
    get_task,
    load_reward,
    register_task,
    registry,
    task_names,
    xml_count_reward,
)
from dipod_trl.tasks.countdown import countdown_solutions
from dipod_trl.tasks.gsm8k import gsm8k_correctness_reward

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom_task.py"

USER_TASKS = '''
from datasets import Dataset
from dipod_trl.tasks import Task, make_prompt


def echo_reward(prompts, completions, word, **kwargs):
    return [float(str(c).strip() == w) for c, w in zip(completions, word)]


class EchoTask(Task):
    name = "echo"
    instruction = "Repeat the word."

    def load(self, path=None, split="train"):
        return Dataset.from_list([{"prompt": make_prompt(w, self.instruction), "word": w} for w in ("ab", "cd")])

    def rewards(self):
        return [(echo_reward, 1.0)]


NOT_A_TASK = 3
'''


@pytest.fixture()
def isolated_registry(monkeypatch):
    """Registrations made by a test stay in that test."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    path = tmp_path / "my_tasks.py"
    path.write_text(USER_TASKS, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def test_registry_is_the_single_task_list():
    assert BUILTIN_TASKS == ("gsm8k", "math500", "countdown", "sudoku") and task_names()[:4] == list(BUILTIN_TASKS)
    for name in BUILTIN_TASKS:
        task = get_task(name)
        assert task.name == name and "<answer>" in task.instruction and get_task(task) is task
        assert len(task.reward_funcs) == len(task.reward_weights) and all(w > 0 for w in task.reward_weights)
    with pytest.raises(ValueError, match="unknown task 'chess'.*gsm8k.*module:MyTask"):
        get_task("chess")
    with pytest.raises(ValueError, match="a task is a name"):
        get_task("")


def test_register_task_refuses_a_second_task_with_the_same_name(isolated_registry):
    class Other(Task):
        name = "gsm8k"

        def rewards(self):
            return [(xml_count_reward, 1.0)]

    with pytest.raises(ValueError, match="already registered"):
        register_task(Other)
    assert isinstance(register_task(Other, replace=True), Other) and isinstance(get_task("gsm8k"), Other)


def _perfect_item(task: Task, row: dict) -> dict:
    answers = {"gsm8k": row.get("answer"), "math500": row.get("answer"), "sudoku": row.get("solution")}
    if task.name == "countdown":
        answers["countdown"] = countdown_solutions(row["numbers"])[row["target"]]
    text = f"<reasoning>\nsure\n</reasoning>\n<answer>\n{answers[task.name]}\n</answer>"
    return {"question": row["prompt"][-1]["content"], "generations": text, **task.item_fields(row)}


def test_builtin_item_fields_and_score_agree(tmp_path):
    """What generate_items saves for a row (item_fields) is what score reads: a right answer scores 1."""
    gsm = tmp_path / "g.jsonl"
    gsm.write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n", encoding="utf-8")
    math = tmp_path / "m.jsonl"
    math.write_text(json.dumps({"problem": "half?", "answer": "\\frac{1}{2}"}) + "\n", encoding="utf-8")
    paths = {"gsm8k": gsm, "math500": math}
    for name in BUILTIN_TASKS:
        task = get_task(name)
        rows = task.load(paths.get(name)).select(range(3 if name not in paths else 1))
        report = score_generations(name, [_perfect_item(task, row) for row in rows])
        assert report["task"] == name and report["accuracy"] == 1.0 and report["correct"] == len(rows), report


def test_user_task_from_module_and_file_specs(user_module):
    for spec in ("my_tasks:EchoTask", f"{user_module}:EchoTask"):
        task = get_task(spec)
        assert task.name == "echo" and task.load()["word"] == ["ab", "cd"], spec
        assert task.reward_funcs[0](["p"], ["ab", "x"], word=["ab", "ab"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="has no attribute 'Missing'"):
        get_task("my_tasks:Missing")
    with pytest.raises(ValueError, match="not a task: subclass dipod_trl.tasks.Task"):
        get_task("my_tasks:NOT_A_TASK")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_xyz'"):
        get_task("no_such_module_xyz:Task")
    with pytest.raises(ValueError, match="not found"):
        get_task(f"{user_module.parent / 'missing.py'}:EchoTask")


def test_user_task_from_entry_point(user_module, isolated_registry, monkeypatch):
    class EntryPoint:
        name, value = "echo", "my_tasks:EchoTask"

        def load(self):
            return registry.load_object(self.value)

    monkeypatch.setattr(registry, "entry_points", lambda group: [EntryPoint()] if group == "dipod_trl.tasks" else [])
    assert "echo" in task_names()
    assert get_task("echo").name == "echo" and "echo" in registry._REGISTRY  # loaded once, then registered


def test_load_reward_specs(user_module):
    assert load_reward("xml_count_reward") is xml_count_reward
    assert load_reward("dipod_trl.tasks.gsm8k:gsm8k_correctness_reward") is gsm8k_correctness_reward
    assert load_reward("dipod_trl.tasks.gsm8k.gsm8k_correctness_reward") is gsm8k_correctness_reward
    assert load_reward(f"{user_module}:echo_reward").__name__ == "echo_reward"
    with pytest.raises(ValueError, match="unknown reward 'nope'.*xml_count_reward"):
        load_reward("nope")
    with pytest.raises(ValueError, match="not a function"):
        load_reward("my_tasks:NOT_A_TASK")


def test_default_load_and_score_of_a_dataset_task(tmp_path):
    def exact(prompts, completions, target, **kwargs):
        return [float(c.strip() == t) for c, t in zip(completions, target)]

    prompts, questions = tmp_path / "p.jsonl", tmp_path / "q.jsonl"
    prompts.write_text(json.dumps({"prompt": "say hi", "target": "hi"}) + "\n", encoding="utf-8")
    questions.write_text(json.dumps({"question": "say yo", "target": "yo"}) + "\n", encoding="utf-8")
    task = DatasetTask([exact], instruction="Answer briefly.")
    ds = task.load(prompts)
    assert ds[0]["prompt"] == [{"role": "user", "content": "Answer briefly.\n\nsay hi"}]
    assert DatasetTask([exact]).load(prompts)[0]["prompt"] == "say hi"  # a plain prompt stays TRL's standard format
    assert DatasetTask([exact]).load(questions)[0]["prompt"] == [{"role": "user", "content": "say yo"}]
    items = [{"question": "say hi", "generations": g, **task.item_fields(ds[0])} for g in (" hi ", "no")]
    assert items[0]["ground_truth"] == {"target": "hi"}
    report = score_generations(task, items)
    assert [v["correct"] for v in report["items"]] == [True, False] and report["accuracy"] == 0.5
    with pytest.raises(ValueError, match="no built-in data"):
        task.load()
    with pytest.raises(ValueError, match="ground_truth must be the dict"):
        task.score("x", {"ground_truth": 3})
    with pytest.raises(ValueError, match="at least one reward"):
        DatasetTask([])


def _tiny_args(tmp_path, model_dir, *extra):
    return ["--config", str(ROOT / "recipes/custom/tiny_cpu.yaml"), "--model_name_or_path", str(model_dir),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--max_train_samples", "8", *extra]


def test_runner_trains_on_a_dataset_file_with_plain_reward_functions(tmp_path, tiny_model_dir, user_module):
    data = tmp_path / "words.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say {w}", "word": w}) + "\n" for w in ("ab", "cd")) * 4)
    with pytest.raises(ValueError, match="no task: pass --task"):
        main(None, _tiny_args(tmp_path, tiny_model_dir, "--dataset_path", str(data)))
    trainer = main(None, _tiny_args(tmp_path, tiny_model_dir, "--dataset_path", str(data), "--reward_funcs",
                                    f"{user_module}:echo_reward", "xml_count_reward"))
    assert trainer.state.global_step == 2
    assert any("rewards/echo_reward/mean" in h and "rewards/xml_count_reward/mean" in h
               for h in trainer.state.log_history)


def test_custom_task_example_trains_two_steps_then_evaluates(tmp_path, tiny_model_dir, capsys):
    spec = f"{EXAMPLE}:Addition"
    trainer = main(None, _tiny_args(tmp_path, tiny_model_dir, "--task", spec))
    assert trainer.state.global_step == 2 and (tmp_path / "out" / "model.safetensors").exists()
    assert any("rewards/sum_reward/mean" in h for h in trainer.state.log_history)
    cli_spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "examples" / "evaluate.py")
    cli = importlib.util.module_from_spec(cli_spec)
    cli_spec.loader.exec_module(cli)
    out = tmp_path / "eval.json"
    assert cli.main(["--task", spec, "--model", str(tmp_path / "out"), "--limit", "3", "--gen_length", "8",
                     "--block_length", "4", "--batch_size", "3", "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["task"] == "addition" and summary["n"] == 3 and 0.0 <= summary["accuracy"] <= 1.0
    generations = json.loads(out.read_text())["generations"]
    first = generations[0]  # the default item_fields: every column but the prompt, read back by the default score
    assert first["question"].endswith("Add: 18 + 73") and first["ground_truth"] == {"question": "Add: 18 + 73",
                                                                                     "answer": "91"}
