"""One figure with the training curves of several `alphagrad train` runs (one panel per task).

    PYTHONPATH=. python benchmarks/plot_alphazero_curves.py RUN_DIR... --out docs/alphazero_curves.png

Each RUN_DIR is an `--out` directory of `alphagrad train` or of
`benchmarks/search_quality_alphazero.py --out DIR` (one sub-directory per graph). A panel plots,
against wall-clock minutes, the best cost the agent has played so far, the greedy policy game's
cost, and, as horizontal lines, the best demonstration, the best classic order and the paper's
published count (for `ref:` graphs). The x axis starts at zero, so the flat start of every curve is
the time spent on the demonstrations' search, pre-training and compilation before the first
iteration ends.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os

from alphagrad import graph


def read_run(run_dir: str) -> list[dict]:
    """Returns one record per task of the run: name, metrics rows (as floats, None where empty) and
    the classic orders' costs from run.json."""
    with open(os.path.join(run_dir, "run.json")) as fh:
        run = json.load(fh)
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as fh:
        rows = [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(fh)]
    return [{"name": name, "rows": rows, "baselines": run["baselines"][name]} for name in run["tasks"]]


def find_runs(paths: list[str]) -> list[str]:
    """Run directories among `paths` and their immediate sub-directories (a benchmark's --out)."""
    runs = []
    for path in paths:
        if os.path.exists(os.path.join(path, "run.json")):
            runs.append(path)
            continue
        subs = sorted(os.path.join(path, d) for d in os.listdir(path))
        found = [d for d in subs if os.path.exists(os.path.join(d, "run.json"))]
        if not found:
            raise SystemExit(f"{path}: neither a run directory (no run.json) nor a folder of run directories")
        runs.extend(found)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories, or folders of run directories")
    parser.add_argument("--out", default="alphazero_curves.png", help="image to write")
    ns = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    published = {name: info.best_published for name, info in graph.reference_info().items()}
    tasks = [task for run in find_runs(ns.runs) for task in read_run(run)]
    order = {name: k for k, name in enumerate(graph.reference_names())}
    tasks.sort(key=lambda task: order.get(task["name"], len(order)))
    cols = min(5, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        name, metrics = task["name"], task["rows"]
        minutes = [0.0] + [row["elapsed_s"] / 60 for row in metrics]
        classic = min(task["baselines"].values())
        # Before the first iteration the agent has played nothing: its curve starts at the best classic cost.
        best = [classic] + [row.get(f"best:{name}") for row in metrics]
        greedy = [None] + [row.get(f"greedy:{name}") for row in metrics]
        ax.step(minutes, best, where="post", color="C0", label="agent best")
        ax.plot(minutes, [math.nan if v is None else v for v in greedy], ".", ms=2, color="C1", label="greedy game")
        demos = [row.get(f"demo:{name}") for row in metrics if row.get(f"demo:{name}") is not None]
        if demos:
            ax.axhline(min(demos), color="C2", ls="-.", lw=1, label="best demonstration")
        ax.axhline(classic, color="black", ls="--", lw=0.8, label="best classic")
        if name in published:
            ax.axhline(published[name], color="C3", ls=":", lw=1.2, label="published (A0)")
        low = min(v for v in [*best, *demos, published.get(name, classic)] if v is not None)
        ax.set_ylim(low * 0.97, classic * 1.08)
        ax.set_title(name, fontsize="medium")
        ax.set_xlabel("minutes")
        ax.tick_params(labelsize="small")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].set_ylabel("multiplications")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize="small")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(ns.out, dpi=90)
    print(f"wrote {ns.out} ({len(tasks)} tasks)")


if __name__ == "__main__":
    main()
