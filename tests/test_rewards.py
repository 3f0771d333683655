"""Tests for the built-in tasks' rewards: robustness (never raise, floats only), Countdown parser safety, verdicts."""

from __future__ import annotations

import math
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dipod_trl.tasks import BUILTIN_TASKS, get_task, soft_format_reward, strict_format_reward, xml_count_reward
from dipod_trl.tasks.countdown import countdown_reward, evaluate_countdown
from dipod_trl.tasks.gsm8k import gsm8k_correctness_reward, gsm8k_gold, int_answer_reward
from dipod_trl.tasks.math500 import math_correctness_reward
from dipod_trl.tasks.parsing import extract_answer, extract_xml_answer, last_number, parse_number
from dipod_trl.tasks.sudoku import is_valid_sudoku_solution, sudoku_cell_reward, sudoku_solved_reward

COLUMNS = {
    "answer": "18",
    "numbers": [49, 55, 53],
    "target": 51,
    "puzzle": "4320004330100004",
    "solution": "4321124334122134",
}
ALL_REWARDS = sorted(
    {f for name in BUILTIN_TASKS for f in get_task(name).reward_funcs} | {sudoku_solved_reward},
    key=lambda f: f.__name__,
)


def call(reward, completions, **overrides):
    n = len(completions)
    columns = {k: [overrides.get(k, v)] * n for k, v in COLUMNS.items()}
    return reward([[{"role": "user", "content": "q"}]] * n, completions, **columns)


def wrap(answer: str) -> str:
    return f"<reasoning>\nthinking\n</reasoning>\n<answer>\n{answer}\n</answer>"


# ----------------------------------------------------------------------------- robustness

texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="0123456789+-*/() .,=^{}\\boxed<answer>", max_size=120),
    st.builds(lambda a, b: f"{a}<answer>{b}</answer>", st.text(max_size=40), st.text(max_size=80)),
    st.builds(lambda a: f"\\boxed{{{a}}}", st.text(alphabet="0123456789+-*/^{}()\\frac sqrt.", max_size=60)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, conversational=st.booleans())
def test_rewards_never_raise_and_return_floats(text, conversational):
    completion = [{"role": "assistant", "content": text}] if conversational else text
    for reward in ALL_REWARDS:
        out = call(reward, [completion, completion])
        assert len(out) == 2
        assert all(type(x) is float and math.isfinite(x) and 0.0 <= x <= 1.0 for x in out), (reward, out)


DEGENERATE = [
    "<reasoning>" * 3000,
    "</reasoning>\n<answer>\n" * 1500,
    "<reasoning>\n" + "\n</reasoning>\n<answer>\n" * 1500 + "\n</answer>",
    "\\boxed{" * 5000 + "1",
    "<answer>" * 4000,
    "1" * 40_000,
    "1,000," * 6000,
    "{" * 20_000 + "}" * 20_000,
    "\\frac{" * 3000,
]


@pytest.mark.parametrize("text", DEGENERATE, ids=range(len(DEGENERATE)))
def test_degenerate_long_completions_are_fast(text):
    start = time.perf_counter()
    for reward in ALL_REWARDS:
        out = call(reward, [text])
        assert type(out[0]) is float
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize("completion", [None, 12, [], [{"role": "assistant"}], {"content": 3}, [{"content": None}]])
def test_odd_completion_objects_score_zero(completion):
    for reward in (gsm8k_correctness_reward, countdown_reward, sudoku_cell_reward, xml_count_reward):
        assert call(reward, [completion]) == [0.0]


def test_missing_column_raises_clear_error():
    with pytest.raises(KeyError, match="answer"):
        gsm8k_correctness_reward(["q"], ["<answer>1</answer>"])
    with pytest.raises(ValueError, match="2 values for 1"):
        countdown_reward(["q"], ["x"], numbers=[[1], [2]], target=[1, 2])


# ----------------------------------------------------------------------------- Countdown safety

HOSTILE = [
    "__import__('os').system('touch {marker}')",
    "().__class__.__bases__[0].__subclasses__()",
    "(lambda: 49)() + 55 - 53",
    "x + 55 - 53",
    "9**9**9",
    "2**1000000",
    "49 ** 55 ** 53",
    "(" * 5000 + "49 + 55 - 53" + ")" * 5000,
    "-" * 5000 + "49 + 55 - 53",
    "49 + 55 - 53" + " + 0" * 10_000,
    "49 / (55 - 55) + 53",
    "49 / 0",
    "9" * 100_000 + " + 55 - 53",
    "99999999999999999999999 * 55 - 53",
    "49 + 55 - 53; import os",
    "49 .real + 55 - 53",
    "49 + 55 - 53 if True else 0",
    "[49, 55, 53]",
    "49 @ 55 - 53",
    "49 % 55 + 53",
]


@pytest.mark.parametrize("template", HOSTILE)
def test_countdown_hostile_inputs_score_zero_quickly(template, tmp_path):
    marker = tmp_path / "pwned"
    expr = template.replace("{marker}", str(marker))
    for text in (wrap(expr), f"\\boxed{{{expr}}}", expr):
        start = time.perf_counter()
        assert call(countdown_reward, [text]) == [0.0]
        assert time.perf_counter() - start < 1.0
    assert not marker.exists()


def test_countdown_parser_evaluates_exactly():
    assert evaluate_countdown("(1 + 2) * 3 - 4 / 2") == (7, [1, 2, 3, 4, 2])
    assert evaluate_countdown("-(3 - 5)") == (2, [3, 5])
    assert evaluate_countdown("1 / 3 * 3") == (1, [1, 3, 3])  # exact, no float error
    assert evaluate_countdown("1 / (2 - 2)") is None
    assert evaluate_countdown("2 3") is None
    assert evaluate_countdown("(1 + 2") is None
    assert evaluate_countdown("2 ** 3") is None and evaluate_countdown("2 * * 3") is None
    assert evaluate_countdown("--3") == (3, [3])
    assert evaluate_countdown("-" * 20 + "3") is None  # nesting bound


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("49 + 55 - 53", 1.0),
        ("\\boxed{55 - 53 + 49}", 1.0),
        ("(55 - 53) + 49 = 51", 1.0),
        ("49 \\times 1 + 55 - 53", 0.0),  # uses an extra number
        ("55 - 53 + 49 + 0", 0.0),
        ("49 + 55", 0.0),  # misses a number
        ("49 + 55 - 53 - 53 + 53", 0.0),  # number used twice
        ("49 + 53 - 55", 0.0),  # wrong value
        ("", 0.0),
    ],
)
def test_countdown_verdicts(answer, expected):
    assert call(countdown_reward, [wrap(answer)]) == [expected]


def test_countdown_division_and_latex_operators():
    assert call(countdown_reward, [wrap("(6 \\div 4) \\times 2")], numbers=[6, 4, 2], target=3) == [1.0]
    assert call(countdown_reward, [wrap("\\frac{6}{4} \\cdot 2")], numbers=[6, 4, 2], target=3) == [1.0]
    assert call(countdown_reward, [wrap("10 / 3 + 1 + 1")], numbers=[10, 3, 1, 1], target=5) == [0.0]
    assert call(countdown_reward, [wrap("92 / (1 + 1)")], numbers=[92, 1, 1], target=46) == [1.0]
    assert call(countdown_reward, [wrap("2 ** 3 * 1")], numbers=[2, 3, 1], target=8) == [0.0]


# ----------------------------------------------------------------------------- GSM8K / MATH


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (wrap("18"), "18", 1.0),
        (wrap("\\boxed{18}"), "Janet ... #### 18", 1.0),
        (wrap("$18.00"), 18.0, 1.0),
        (wrap("\\boxed{6,277}"), "6277", 1.0),
        (wrap("The answer is 18 dollars"), "18", 1.0),
        (wrap("\\frac{36}{2}"), "18", 1.0),
        ("no tags, so the total is 18", "18", 1.0),  # last-number fallback
        (wrap("17"), "18", 0.0),
        (wrap("18") + "\nActually 17.", "18", 1.0),  # answer tag beats the last number
        (wrap(""), "18", 0.0),
        ("<|eot_id|>", "18", 0.0),
    ],
)
def test_gsm8k_verdicts(completion, gold, expected):
    assert call(gsm8k_correctness_reward, [completion], answer=gold) == [expected]


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("\\boxed{\\frac{1}{4}}", "\\frac{1}{4}", 1.0),
        ("\\boxed{0.25}", "\\frac{1}{4}", 1.0),
        ("\\boxed{\\dfrac{3}{24}}", "\\frac 18", 1.0),
        ("\\boxed{2\\sqrt{5}}", "2 \\sqrt{5}", 1.0),
        ("\\boxed{3, 7, 5}", "3, 5, 7", 1.0),
        ("\\sqrt{20}", "2\\sqrt{5}", 1.0),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{4}", 0.0),
        ("\\boxed{}", "\\pi", 0.0),
        ("\\boxed{9^{9^{9}}}", "5", 0.0),
    ],
)
def test_math_verdicts(answer, gold, expected):
    assert call(math_correctness_reward, [wrap(answer)], answer=gold) == [expected]


def test_math_reward_off_main_thread_is_bounded():
    results: dict[str, list[float]] = {}

    def work():
        start = time.perf_counter()
        results["good"] = call(math_correctness_reward, [wrap("\\boxed{\\frac{2}{8}}")], answer="\\frac{1}{4}")
        results["towers"] = call(math_correctness_reward, [wrap("\\boxed{9^{9^{9}}}"), wrap("2^{10000000}")])
        results["fact"] = call(gsm8k_correctness_reward, [wrap("100000000!")], answer="5")
        results["seconds"] = [time.perf_counter() - start]

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert results["good"] == [1.0] and results["towers"] == [0.0, 0.0] and results["fact"] == [0.0]
    assert results["seconds"][0] < 10


def test_extraction_helpers():
    assert extract_answer("a <answer> x </answer> b <answer>\n\\boxed{\\frac{1}{2}}\n</answer>") == "\\frac{1}{2}"
    assert extract_answer("so \\boxed{4} and \\boxed{5}") == "5"
    assert extract_answer("\\boxed{5") is None
    assert extract_answer("total 3 then 7", last_number_fallback=True) == "7"
    assert extract_xml_answer("<answer>\n42") == "42"
    assert last_number("1,234 and 5,67") == "67"
    assert parse_number("\\$1,000.50") == 1000.5 and parse_number("12 apples") is None
    assert gsm8k_gold("steps\n#### 1,200") == "1200" and gsm8k_gold(7.0) == "7"


# ----------------------------------------------------------------------------- Sudoku and format


def test_sudoku_rewards():
    puzzle, solution = COLUMNS["puzzle"], COLUMNS["solution"]
    half = "".join(s if i < 8 else p for i, (p, s) in enumerate(zip(puzzle, solution)))
    cases = {
        wrap(solution): (1.0, 1.0),
        wrap("4321\n1243\n3412\n2134"): (1.0, 1.0),
        wrap(puzzle): (0.0, 0.0),
        wrap(half): (puzzle[:8].count("0") / puzzle.count("0"), 0.0),
        wrap(solution[:10]): (sum(p == "0" for p in puzzle[:10]) / puzzle.count("0"), 0.0),
        "no answer here": (0.0, 0.0),
        f"I think it is {solution}.": (1.0, 1.0),
    }
    for text, (cells, solved) in cases.items():
        assert call(sudoku_cell_reward, [text]) == [pytest.approx(cells)], text
        assert call(sudoku_solved_reward, [text]) == [solved], text


def test_sudoku_alternative_valid_solution_counts():
    # two solutions: the givens do not fix which of two digits goes where
    solution = "1234341221434321"
    alternative = "1234341243212143"
    puzzle = "".join(a if a == b else "0" for a, b in zip(solution, alternative))
    assert is_valid_sudoku_solution(alternative, puzzle)
    assert call(sudoku_solved_reward, [wrap(alternative)], puzzle=puzzle, solution=solution) == [1.0]


def test_format_rewards():
    good = wrap("18") + "<|eot_id|><|endoftext|>"
    assert call(strict_format_reward, [good, "<reasoning>x</reasoning><answer>1</answer>"]) == [1.0, 0.0]
    assert call(soft_format_reward, ["<reasoning>x</reasoning> <answer>1</answer>", "<answer>1</answer>"]) == [
        1.0,
        0.0,
    ]
    assert call(xml_count_reward, [good, good + "\ntrailing", "nothing"]) == [1.0, pytest.approx(0.992), 0.0]
    assert call(int_answer_reward, [wrap("18"), wrap("18.5"), "18"]) == [1.0, 0.0, 0.0]


def test_task_rewards_and_weights():
    expected = {  # d1's recipes: correctness dominates, format shaping is small
        "gsm8k": [(gsm8k_correctness_reward, 2.0), (int_answer_reward, 0.5), (strict_format_reward, 0.5),
                  (soft_format_reward, 0.5), (xml_count_reward, 0.5)],
        "math500": [(math_correctness_reward, 2.0), (soft_format_reward, 0.5), (xml_count_reward, 0.5)],
        "countdown": [(countdown_reward, 1.0), (soft_format_reward, 0.25), (xml_count_reward, 0.25)],
        "sudoku": [(sudoku_cell_reward, 1.0), (soft_format_reward, 0.25), (xml_count_reward, 0.25)],
    }
    for name, pairs in expected.items():
        task = get_task(name)
        assert list(zip(task.reward_funcs, task.reward_weights)) == pairs, name
