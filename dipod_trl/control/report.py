"""Outputs: per-run CSV and learning curve, and aggregation of many runs into a table and mean ± std curves.

Aggregation expects run directories (any depth under a root) that each hold ``config.yaml`` and ``progress.csv``,
as written by ``trainer.run_experiment``. Command line: ``python examples/control.py --aggregate RUNS_DIR``.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

ALGO_COLORS = {"ppo": "tab:gray", "fpo": "tab:orange", "fpo_dipod": "tab:blue"}


class CsvLogger:
    """Appends rows and rewrites the file each time, so late-appearing columns (update stats) are kept."""

    def __init__(self, path: str | Path) -> None:
        self.path, self.rows = Path(path), []

    def log(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)


def read_csv(path: str | Path) -> list[dict[str, float]]:
    with Path(path).open() as f:
        return [{k: float(v) if v != "" else math.nan for k, v in row.items()} for row in csv.DictReader(f)]


def plot_run(rows: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Learning curve of one run: deterministic eval return (± std over episodes) and mean train return."""
    steps = np.array([r["step"] for r in rows])
    ret, std = np.array([r["eval_return"] for r in rows]), np.array([r["eval_return_std"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, ret, label="eval (deterministic)")
    ax.fill_between(steps, ret - std, ret + std, alpha=0.2)
    ax.plot(steps, [r["train_return"] for r in rows], "--", label="train episodes (stochastic)")
    ax.set(xlabel="environment steps", ylabel="return", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def load_runs(root: str | Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """{(env_id, algo): [{"seed", "rows"}, ...]} for every run directory under ``root``."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for csv_path in sorted(Path(root).rglob("progress.csv")):
        cfg = yaml.safe_load((csv_path.parent / "config.yaml").read_text())
        runs[(cfg["env_id"], cfg["algo"])].append(
            {"seed": cfg["seed"], "rows": read_csv(csv_path), "dir": csv_path.parent}
        )
    return runs


def _stack(runs: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values[seed, step]) on the eval steps common to all seeds."""
    common = sorted(set.intersection(*({r["step"] for r in run["rows"]} for run in runs)))
    values = [[next(r.get(key, math.nan) for r in run["rows"] if r["step"] == s) for s in common] for run in runs]
    return np.array(common), np.array(values, dtype=float)


def summarize(runs: dict[tuple[str, str], list[dict[str, Any]]], last_k: int = 3) -> list[dict[str, Any]]:
    """Per (env, algo): final eval return and the mean of the last ``last_k`` evals, mean ± std over seeds."""
    table = []
    for (env, algo), group in sorted(runs.items()):
        final = np.array([run["rows"][-1]["eval_return"] for run in group])
        lastk = np.array([np.mean([r["eval_return"] for r in run["rows"][-last_k:]]) for run in group])
        wall = np.array([run["rows"][-1]["wall_time"] for run in group])
        table.append({
            "env": env, "algo": algo, "seeds": len(group), "steps": int(group[0]["rows"][-1]["step"]),
            "final_mean": final.mean(), "final_std": final.std(), f"last{last_k}_mean": lastk.mean(),
            f"last{last_k}_std": lastk.std(), "wall_s_per_run": wall.mean(),
        })  # fmt: skip
    return table


def markdown_table(table: list[dict[str, Any]], last_k: int = 3) -> str:
    lines = [
        f"| env | algo | seeds | steps | final eval return | mean of last {last_k} evals | wall s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        lines.append(
            f"| {r['env']} | {r['algo']} | {r['seeds']} | {r['steps']} | {r['final_mean']:.1f} ± {r['final_std']:.1f} "
            f"| {r[f'last{last_k}_mean']:.1f} ± {r[f'last{last_k}_std']:.1f} | {r['wall_s_per_run']:.0f} |"
        )
    return "\n".join(lines)


def plot_env(env: str, groups: dict[str, list[dict[str, Any]]], path: str | Path) -> None:
    """Mean ± std (over seeds) of eval return per algorithm, and of the on-policy CFM loss for the flow algos."""
    fig, (ax_ret, ax_cfm) = plt.subplots(1, 2, figsize=(11, 4))
    for algo, group in sorted(groups.items()):
        color = ALGO_COLORS.get(algo)
        steps, ret = _stack(group, "eval_return")
        ax_ret.plot(steps, ret.mean(0), color=color, label=f"{algo} (n={len(group)})")
        ax_ret.fill_between(steps, ret.mean(0) - ret.std(0), ret.mean(0) + ret.std(0), color=color, alpha=0.2)
        steps, cfm = _stack(group, "cfm_onpolicy")
        logged = np.isfinite(cfm).all(0)  # no update stats at step 0, none at all for ppo
        steps, cfm = steps[logged], cfm[:, logged]
        if cfm.size:
            ax_cfm.plot(steps, cfm.mean(0), color=color, label=algo)
            lo, hi = cfm.mean(0) - cfm.std(0), cfm.mean(0) + cfm.std(0)
            ax_cfm.fill_between(steps, lo, hi, color=color, alpha=0.2)
    ax_ret.set(xlabel="environment steps", ylabel="deterministic eval return", title=env)
    ax_cfm.set(
        xlabel="environment steps", ylabel="CFM loss of own samples", title="on-policy CFM loss (drift of the bound)"
    )
    ax_ret.legend()
    if ax_cfm.lines:
        ax_cfm.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def aggregate(root: str | Path, out_dir: str | Path | None = None, last_k: int = 3) -> str:
    """Write ``summary.md``, ``summary.csv`` and one ``<env>.png`` per env into ``out_dir`` (default ``root``)."""
    runs = load_runs(root)
    if not runs:
        raise FileNotFoundError(f"no progress.csv found under {root}")
    out = Path(out_dir or root)
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(runs, last_k)
    md = markdown_table(table, last_k)
    (out / "summary.md").write_text(md + "\n")
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    by_env: dict[str, dict[str, list]] = defaultdict(dict)
    for (env, algo), group in runs.items():
        by_env[env][algo] = group
    for env, groups in by_env.items():
        plot_env(env, groups, out / f"{env.lower()}.png")
    return md
