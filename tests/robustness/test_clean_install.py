"""`pip install -e ".[dev]"` must not warn about extras: every extra our requirements ask for, and every extra those
extras ask for in turn, is published under exactly that name. (`math-verify[antlr4-13-2]` made pip warn: math-verify
asks latex2sympy2_extended for `antlr4_13_2`, which it publishes as `antlr4-13-2`.)"""

import configparser
from importlib.metadata import PackageNotFoundError, metadata
from pathlib import Path

from packaging.requirements import Requirement

SETUP = Path(__file__).resolve().parents[2] / "setup.cfg"


def _requirements() -> list[Requirement]:
    cfg = configparser.ConfigParser()
    cfg.read(SETUP)
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"].values():
        lines += extra.splitlines()
    return [Requirement(line) for line in lines if line.strip()]


def extra_problems(req: Requirement, seen: set | None = None) -> list[str]:
    """Extras of `req` (and, transitively, of what those extras require) that the installed packages do not publish."""
    seen = set() if seen is None else seen
    try:
        meta = metadata(req.name)
    except PackageNotFoundError:
        return []
    published = set(meta.get_all("Provides-Extra") or [])
    problems = [f"{req.name} does not publish the extra {extra!r} ({sorted(published)})"
                for extra in req.extras if extra not in published]
    for extra in req.extras & published:
        for line in meta.get_all("Requires-Dist") or []:
            sub = Requirement(line)
            if sub.extras and sub.marker is not None and "extra" in str(sub.marker) \
                    and sub.marker.evaluate({"extra": extra}) and (sub.name, extra) not in seen:
                seen.add((sub.name, extra))
                problems += extra_problems(sub, seen)
    return problems


def test_no_requested_extra_makes_pip_warn():
    assert [p for req in _requirements() for p in extra_problems(req)] == []


def test_the_check_catches_the_math_verify_extras():
    assert extra_problems(Requirement("math-verify[antlr4_13_2]"))  # the old spelling
    assert any("latex2sympy2" in p for p in extra_problems(Requirement("math-verify[antlr4-13-2]")))  # its own typo
