"""Math rewards return within a bounded time from the main thread, another thread and another process: SymPy bombs
score 0 and are counted, the deadline is configurable, and a stuck worker is replaced."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from dipod_trl.tasks import math_verify_timeout, math_verify_timeouts, set_math_verify_timeout
from dipod_trl.tasks import math_verify_worker as worker
from dipod_trl.tasks.gsm8k import gsm8k_correctness_reward
from dipod_trl.tasks.math500 import math_correctness_reward

# issue 12: each took 3-4.6 s on the main thread and never returned within 60 s on another thread
HOSTILE = [
    "\\boxed{(9^{9999})^{(9999)}}",
    "\\boxed{\\prod_{n=1}^{9999}(n^2+1)}",
    "\\boxed{\\sum_{n=1}^{9999} n^{n}}",
    "\\boxed{" + "(" * 180 + "1" + ")" * 180 + "}",
]
REWARDS = [math_correctness_reward, gsm8k_correctness_reward]
BOUND_S = 1.0


def wrap(answer: str) -> str:
    return f"<reasoning>\nthinking\n</reasoning>\n<answer>\n{answer}\n</answer>"


def score_hostile(reward) -> list[tuple[str, list[float], float, int]]:
    """(answer, scores, seconds, timeouts counted) for every hostile answer through ``reward``."""
    out = []
    for answer in HOSTILE:
        before, start = math_verify_timeouts(), time.perf_counter()
        scores = reward(["q"], [wrap(answer)], answer=["5"])
        out.append((answer[:40], scores, time.perf_counter() - start, math_verify_timeouts() - before))
    return out


@pytest.fixture(autouse=True)
def started_worker():
    """Start this process's worker first: its one-off start-up is not a completion's time."""
    assert math_correctness_reward(["q"], [wrap("\\frac{2}{8}")], answer=["\\frac{1}{4}"]) == [1.0]


@pytest.mark.parametrize("reward", REWARDS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("where", ["main_thread", "other_thread"])
def test_hostile_answers_score_zero_within_a_second_and_are_counted(reward, where):
    results: list = []
    if where == "main_thread":
        results = score_hostile(reward)
    else:  # how TRL calls async reward functions: on an event-loop thread
        thread = threading.Thread(target=lambda: results.extend(score_hostile(reward)), daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "a reward did not return"
    assert len(results) == len(HOSTILE)
    for answer, scores, seconds, counted in results:
        assert scores == [0.0] and counted == 1 and seconds < BOUND_S, (answer, scores, seconds, counted)


def _in_child() -> tuple[list, float, int]:
    box: dict = {}
    before = math_verify_timeouts()

    def run():
        start = time.perf_counter()
        box["scores"] = math_correctness_reward(["q"], [wrap(HOSTILE[0]), wrap("0.25")], answer=["\\frac{1}{4}"] * 2)
        box["seconds"] = time.perf_counter() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    return box.get("scores"), box.get("seconds"), math_verify_timeouts() - before


def test_a_forked_process_gets_its_own_worker():
    parent_worker = worker._WORKER.proc.pid
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        scores, seconds, timeouts = pool.submit(_in_child).result(timeout=180)  # includes the child's worker start
    assert scores == [0.0, 1.0] and timeouts == 1 and seconds is not None, (scores, seconds, timeouts)
    assert worker._WORKER.proc.pid == parent_worker and worker._WORKER.proc.poll() is None  # untouched
    assert math_correctness_reward(["q"], [wrap("0.25")], answer=["\\frac{1}{4}"]) == [1.0]


def test_timeout_is_configurable():
    previous = set_math_verify_timeout(0.2)
    try:
        assert math_verify_timeout() == 0.2
        start = time.perf_counter()
        assert math_correctness_reward(["q"], [wrap(HOSTILE[1])], answer=["5"]) == [0.0]
        assert time.perf_counter() - start < 0.2 + 0.4
    finally:
        set_math_verify_timeout(previous)
    for bad in (0, -1, float("nan"), float("inf"), "soon"):
        with pytest.raises(ValueError, match="positive number of seconds"):
            set_math_verify_timeout(bad)


def test_a_stuck_worker_is_killed_replaced_and_counted():
    stuck = worker._WORKER.proc
    os.kill(stuck.pid, signal.SIGSTOP)  # as if stuck in C code, where no timer reaches
    before, start = math_verify_timeouts(), time.perf_counter()
    assert math_correctness_reward(["q"], [wrap("0.25")], answer=["\\frac{1}{4}"]) == [0.0]
    assert time.perf_counter() - start < math_verify_timeout() + worker.GRACE_S + 0.5
    assert math_verify_timeouts() == before + 1 and stuck.poll() is not None  # killed
    assert math_correctness_reward(["q"], [wrap("0.25")], answer=["\\frac{1}{4}"]) == [1.0]  # the replacement
    assert worker._WORKER.proc.pid != stuck.pid


FIRST_CALL = """
import json, sys, time
from dipod_trl.tasks import get_task
task = get_task(sys.argv[1])
reward = task.reward_funcs[0]        # setting up the task's rewards starts the worker in the background
time.sleep(3.0)                       # what generating the first completions takes, at least
start = time.perf_counter()
scores = reward(["q"], [sys.argv[2]], answer=["5"])
print(json.dumps({"seconds": time.perf_counter() - start, "scores": scores}))
"""


@pytest.mark.parametrize("task", ["math500", "gsm8k"])
def test_the_first_hostile_answer_of_a_run_is_bounded_too(task):
    """In a fresh process: a task's rewards start the worker, so the first check does not pay its start-up."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FIRST_CALL, task, wrap(HOSTILE[0])], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["scores"] == [0.0] and result["seconds"] < BOUND_S, result
