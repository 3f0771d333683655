"""`pip install -e ".[dev]"` must not warn about extras our requirements ask for: each extra is spelled exactly as
the installed distribution publishes it (math-verify publishes `antlr4-13-2`; `antlr4_13_2` made pip warn)."""

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


def test_every_requested_extra_is_published_under_that_exact_name():
    checked = 0
    for req in _requirements():
        if not req.extras:
            continue
        try:
            published = set(metadata(req.name).get_all("Provides-Extra") or [])
        except PackageNotFoundError:
            continue
        for extra in req.extras:
            assert extra in published, f"{req.name} publishes {sorted(published)}, not {extra!r}"
            checked += 1
    assert checked >= 1  # math-verify's antlr extra is always installed with the package
