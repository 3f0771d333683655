"""Outputs: per-run CSVs and learning curve, and aggregation of many runs into a table and mean ± std curves.

Aggregation expects run directories (any depth under a root) that each hold ``config.yaml`` and ``progress.csv``
(one row per evaluation) and, optionally, ``updates.csv`` (one row per update, with the drift probe), as written by
``trainer.run_experiment``. Runs are grouped by env and method (``config.method_label``). Command line:
``python examples/control.py --aggregate RUNS_DIR``.
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

from .config import ConfigError, method_label  # noqa: E402

METHOD_ORDER = ("ppo", "fpo", "fpo++", "fpo++ +SD", "fpo++ +DiPOD", "fpo++ +SD +DiPOD")
METHOD_COLORS = {"ppo": "tab:gray", "fpo": "tab:orange", "fpo++": "tab:green", "fpo++ +SD": "tab:purple",
                 "fpo++ +DiPOD": "tab:blue", "fpo++ +SD +DiPOD": "tab:red"}  # fmt: skip
DRIFT_PANELS = (
    ("likelihood_gap", "log pi(a|o) + L_cfm(a|o)", "likelihood gap (exact log pi vs -CFM)"),
    ("gap_std", "std over actions", "spread of the gap (0 = exact FPO ratio)"),
    ("ratio_err", "|exact - FPO log-ratio|", "error of FPO's log-ratio per update"),
)


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


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean after dropping ``floor(n / 4)`` values at each end (rliable's convention)."""
    x, cut = np.sort(np.asarray(values, float)), len(values) // 4
    return float(x[cut : len(x) - cut].mean())


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
    """{(env_id, method): [{"seed", "rows", "updates", "dir"}, ...]} for every finished run directory under ``root``."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for csv_path in sorted(Path(root).rglob("progress.csv")):
        cfg = yaml.safe_load((csv_path.parent / "config.yaml").read_text())
        rows = read_csv(csv_path)
        if not rows or rows[-1]["step"] < cfg["total_timesteps"] - cfg["num_envs"] * cfg["num_steps"]:
            continue  # unfinished (still running or killed): left out of the table
        upd = csv_path.parent / "updates.csv"
        runs[(cfg["env_id"], method_label(cfg))].append(
            {
                "seed": cfg["seed"],
                "rows": rows,
                "updates": read_csv(upd) if upd.exists() else [],
                "dir": csv_path.parent,
            }
        )
    return runs


def _stack(series: list[list[dict[str, float]]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values[run, step]) on the steps common to all runs."""
    common = sorted(set.intersection(*({r["step"] for r in rows} for rows in series)))
    values = [[next(r.get(key, math.nan) for r in rows if r["step"] == s) for s in common] for rows in series]
    return np.array(common), np.array(values, dtype=float)


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (NaN if none, e.g. no episode finished in a tiny run), without a warning."""
    x = np.asarray(values, float)
    return float(x[np.isfinite(x)].mean()) if np.isfinite(x).any() else math.nan


def _drift(updates: list[dict[str, float]], key: str, part: str) -> float:
    """Mean of ``key`` over the first or last 20 % of updates (or all of them), NaN if not logged."""
    values = np.array([u.get(key, math.nan) for u in updates], float)
    if not values.size or not np.isfinite(values).any():
        return math.nan
    k = max(1, len(values) // 5)
    return float(np.nanmean({"first": values[:k], "last": values[-k:], "all": values}[part]))


def summarize(runs: dict[tuple[str, str], list[dict[str, Any]]], last_k: int = 3) -> list[dict[str, Any]]:
    """Per (env, method): final eval return (mean, std, IQM over seeds), mean of the last ``last_k`` evals, and the
    drift probe (gap at the start / end of training, its spread at the end, FPO's log-ratio error)."""
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    table = []
    for (env, method), group in sorted(runs.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        final = np.array([run["rows"][-1]["eval_return"] for run in group])
        lastk = np.array([np.mean([r["eval_return"] for r in run["rows"][-last_k:]]) for run in group])
        drift: dict[str, float] = {}
        for key, part in (("likelihood_gap", "first"), ("likelihood_gap", "last"), ("gap_std", "last"),
                          ("ratio_err", "all"), ("ratio_corr", "all"), ("exact_kl", "all")):  # fmt: skip
            values = [_drift(run["updates"], key, part) for run in group]
            if not all(math.isnan(v) for v in values):
                drift[f"{key}_{part}"] = float(np.nanmean(values))
        table.append({
            "env": env, "method": method, "seeds": len(group), "steps": int(group[0]["rows"][-1]["step"]),
            "final_mean": final.mean(), "final_std": final.std(), "final_iqm": iqm(final),
            f"last{last_k}_mean": lastk.mean(), f"last{last_k}_std": lastk.std(),
            "train_return_final": _finite_mean([run["rows"][-1]["train_return"] for run in group]),
            "wall_s_per_run": float(np.mean([run["rows"][-1]["wall_time"] for run in group])),
            "sd_env_steps": float(np.mean([run["rows"][-1].get("sd_env_steps", 0.0) for run in group])),
            **drift,
        })  # fmt: skip
    return table


def _fmt(value: Any, spec: str = ".2f") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def markdown_table(table: list[dict[str, Any]], last_k: int = 3) -> str:
    lines = [
        f"| env | method | seeds | steps | final return (mean ± std) | final IQM | last {last_k} evals | "
        "gap start → end | gap std (end) | log-ratio err | exact KL | wall s / run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        gap = f"{_fmt(r.get('likelihood_gap_first'))} → {_fmt(r.get('likelihood_gap_last'))}"
        lines.append(
            f"| {r['env']} | {r['method']} | {r['seeds']} | {r['steps']} | {r['final_mean']:.1f} ± {r['final_std']:.1f} "
            f"| {r['final_iqm']:.1f} | {r[f'last{last_k}_mean']:.1f} ± {r[f'last{last_k}_std']:.1f} | "
            f"{gap if 'likelihood_gap_first' in r else '–'} | {_fmt(r.get('gap_std_last'))} | "
            f"{_fmt(r.get('ratio_err_all'), '.3f')} | {_fmt(r.get('exact_kl_all'), '.3f')} | {r['wall_s_per_run']:.0f} |"
        )
    return "\n".join(lines)


def plot_env(env: str, groups: dict[str, list[dict[str, Any]]], path: str | Path) -> None:
    """Mean ± std over seeds: eval return per method, and the exact-likelihood drift probe of the flow methods."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    for method, group in sorted(groups.items(), key=lambda kv: order.get(kv[0], 99)):
        color = METHOD_COLORS.get(method)
        steps, ret = _stack([run["rows"] for run in group], "eval_return")
        axes[0, 0].plot(steps, ret.mean(0), color=color, label=f"{method} (n={len(group)})")
        axes[0, 0].fill_between(steps, ret.mean(0) - ret.std(0), ret.mean(0) + ret.std(0), color=color, alpha=0.15)
        if not all(run["updates"] for run in group):
            continue
        for ax, (key, _, _) in zip(axes.flat[1:], DRIFT_PANELS):
            steps, val = _stack([run["updates"] for run in group], key)
            logged = np.isfinite(val).all(0)
            if logged.any():
                steps, val = steps[logged], val[:, logged]
                ax.plot(steps, val.mean(0), color=color, label=method)
                ax.fill_between(steps, val.mean(0) - val.std(0), val.mean(0) + val.std(0), color=color, alpha=0.15)
    axes[0, 0].set(xlabel="environment steps", ylabel="deterministic eval return", title=env)
    axes[0, 0].legend(fontsize=8)
    for ax, (_, ylabel, title) in zip(axes.flat[1:], DRIFT_PANELS):
        ax.set(xlabel="environment steps", ylabel=ylabel, title=title)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def aggregate(root: str | Path, out_dir: str | Path | None = None, last_k: int = 3) -> str:
    """Write ``summary.md``, ``summary.csv`` and one ``<env>.png`` per env into ``out_dir`` (default ``root``)."""
    if not Path(root).is_dir():
        raise ConfigError(f"--aggregate: {root} is not a directory")
    runs = load_runs(root)
    if not runs:
        raise ConfigError(f"--aggregate: no finished run (config.yaml + progress.csv) under {root}")
    out = Path(out_dir or root)
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(runs, last_k)
    md = markdown_table(table, last_k)
    (out / "summary.md").write_text(md + "\n")
    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in table for k in row)), restval="")
        writer.writeheader()
        writer.writerows(table)
    by_env: dict[str, dict[str, list]] = defaultdict(dict)
    for (env, method), group in runs.items():
        by_env[env][method] = group
    for env, groups in by_env.items():
        plot_env(env, groups, out / f"{env.lower()}.png")
    return md
