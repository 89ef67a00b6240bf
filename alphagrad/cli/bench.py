"""`alphagrad bench`: every search method on the reference graphs and the traced tasks, written
to ``docs/RESULTS.md`` (and a plot, when matplotlib is installed).

    >>> from alphagrad.cli.bench import run_bench, render_markdown
    >>> rows = run_bench(["ref:PropaneCombustion", "Perceptron"], seconds=5)
    >>> text = render_markdown(rows, seconds=5)
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import platform
from collections.abc import Callable, Sequence

from alphagrad import graph as graph_lib
from alphagrad import tasks
from alphagrad.agents import SearchResult, alphazero_status, search
from alphagrad.cli.timing import example_arrays, runtime_ratios
from alphagrad.files import write_atomically

__all__ = [
    "BENCH_METHODS",
    "RUNTIME_BATCH",
    "BenchRow",
    "default_specs",
    "render_markdown",
    "run_bench",
    "write_plot",
]

BENCH_METHODS = ("heuristics", "sa", "beam", "exact")
#: Batch size of the interpreter timing in `alphagrad bench`.
RUNTIME_BATCH = 512


@dataclasses.dataclass
class BenchRow:
    """One graph's results: baselines, each method's `SearchResult`, the published count."""

    spec: str
    num_intermediates: int
    baselines: dict[str, int]
    results: dict[str, SearchResult]
    published: int | None
    notes: dict[str, str] = dataclasses.field(default_factory=dict)
    runtime: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def best_order(self):
        """The cheapest order of the row: a search's order or a baseline's name."""
        found = min(self.results.values(), key=lambda r: r.cost, default=None)
        base = min(self.baselines, key=self.baselines.get)
        return found.order if found is not None and found.cost <= self.baselines[base] else base

    @property
    def best(self) -> int:
        return min([*self.baselines.values(), *(r.cost for r in self.results.values())])


def default_specs() -> list[str]:
    """The ten reference graphs, then the registered closed-form and random tasks."""
    return ["ref:" + n for n in graph_lib.reference_names()] + list(tasks.names())


def _bench_graph(task: tasks.ResolvedTask) -> graph_lib.Graph:
    """Reference graphs as shipped; JAX functions as the interpreter runs them in the runtime
    section (exact cost model, derivatives with respect to every argument, float32 array inputs,
    as `benchmarks/jacobian_runtime.py`), so that the best order is one for the timed graph."""
    if task.fn is None:
        return task.graph()
    return task.with_args(example_arrays(task.args)).graph(cost_model="exact")


def run_bench(
    specs: Sequence[str] | None = None,
    *,
    seconds: float = 20.0,
    alphazero: bool = False,
    graph_file: str | None = None,
    on_row: Callable[[BenchRow], None] | None = None,
    on_start: Callable[[str, str], None] | None = None,
    runtime: bool = True,
) -> list[BenchRow]:
    """Runs `BENCH_METHODS` (and AlphaZero if asked and available) with `seconds` each per graph.

    Args:
      specs: task specs (default `default_specs()`).
      seconds: budget of each method on each graph.
      alphazero: also train AlphaZero for `seconds` per graph (when the agent is available).
      graph_file: graphs.json for ``ref:`` specs (default: the shipped copy).
      on_row: called with each finished row.
      on_start: called with (spec, method) before each search.
      runtime: for JAX functions (registered tasks), also time the interpreter with the best
        order against jax.jacfwd / jax.jacrev at batch `RUNTIME_BATCH`.
    """
    info = graph_lib.reference_info(graph_file)
    az_ok, az_message = alphazero_status()
    rows = []
    for spec in specs or default_specs():
        task = tasks.resolve(spec, graph_file=graph_file)
        g = _bench_graph(task)
        baselines = {name: graph_lib.cost(g, name) for name in ("forward", "reverse", "markowitz")}
        methods = list(BENCH_METHODS) + (["alphazero"] if alphazero and az_ok else [])
        results, notes = {}, {}
        for method in methods:
            if on_start is not None:
                on_start(spec, method)
            try:
                results[method] = search(g, method, seconds=seconds)
            except Exception as err:  # noqa: BLE001 - one failing method must not lose the table
                notes[method] = f"failed: {type(err).__name__}: {err}"
        if alphazero and not az_ok:
            notes["alphazero"] = az_message
        published = info[spec[4:]].best_published if spec.startswith("ref:") and spec[4:] in info else None
        row = BenchRow(spec, g.num_intermediates, baselines, results, published, notes)
        if runtime and task.fn is not None:
            if on_start is not None:
                on_start(spec, "runtime")
            row.runtime = runtime_ratios(task.fn, task.args, list(row.best_order) if not isinstance(
                row.best_order, str) else row.best_order, batch=RUNTIME_BATCH)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def _cell(row: BenchRow, method: str) -> str:
    r = row.results.get(method)
    if r is None:
        return "–"
    if method == "exact" and not r.optimal:  # its order is only the incumbent it was seeded with
        return f"≥ {r.lower_bound}" if r.lower_bound else "no proof"
    return f"{r.cost} (optimal)" if r.optimal else str(r.cost)


def render_markdown(rows: Sequence[BenchRow], *, seconds: float, plot: str | None = None) -> str:
    """The RESULTS.md text for `rows` (each method ran `seconds` per graph)."""
    az_ok, az_message = alphazero_status()
    has_az = any("alphazero" in r.results for r in rows)
    lines = [
        "# Results",
        "",
        "Multiplications of the Jacobian accumulation under each graph's cost model (reference",
        "graphs: `alphagrad-2024`; traced tasks: `exact`, the model the interpreter realises).",
        "Regenerate with `alphagrad bench` (this file) or, for the 5-minute portfolio per graph,",
        "`python benchmarks/search_quality.py`.",
        "",
        (f"{datetime.date.today().isoformat()} · {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores "
         f"(shared with other jobs) · each search method ran **{seconds:g} s per graph** (compilation included)."),
        "",
        "Columns: *best heuristic* is the cheapest ANGEL chain (`agents.search_heuristics`); *SA* simulated",
        "annealing from the Markowitz, reverse and forward orders; *beam* beam search with incumbent",
        "completion; *exact* the exact solver: its optimum where it proved one, else the lower bound it",
        "proved (≥ N; \"no proof\" on tensor graphs too large for it); *best* the cheapest order of all",
        "columns; *published* the AlphaGrad paper's best count (reference graphs only).",
        "",
    ]
    header = ["graph", "intermediates", "forward", "reverse", "Markowitz", "best heuristic", "SA", "beam", "exact"]
    if has_az:
        header.append("AlphaZero")
    header += ["best", "published"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        cells = [row.spec, str(row.num_intermediates), str(row.baselines["forward"]), str(row.baselines["reverse"]),
                 str(row.baselines["markowitz"]), _cell(row, "heuristics"), _cell(row, "sa"), _cell(row, "beam"),
                 _cell(row, "exact")]
        if has_az:
            cells.append(_cell(row, "alphazero"))
        best = row.best
        proven = any(r.optimal and r.cost == best for r in row.results.values())
        mark = ""
        if row.published is not None:
            mark = " ✓" if best < row.published else (" =" if best == row.published else " ✗")
        cells += [f"**{best}**" + (" (optimal)" if proven else "") + mark,
                  str(row.published) if row.published is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    ref_rows = [r for r in rows if r.published is not None]
    if ref_rows:
        below = sum(r.best < r.published for r in ref_rows)
        equal = sum(r.best == r.published for r in ref_rows)
        lines += ["", (f"Reference graphs: best of all strictly below the published count on {below} of "
                       f"{len(ref_rows)}, equal on {equal} (✓ below, = equal, ✗ above).")]
    if not has_az:
        lines += ["", f"AlphaZero: not run in this table ({az_message if not az_ok else 'pass --alphazero to include it'})."]
    notes = [f"- {row.spec} {m}: {text}" for row in rows for m, text in row.notes.items()]
    if notes:
        lines += ["", "Notes:", *notes]
    if plot:
        lines += ["", f"![cost relative to the published count or to reverse mode]({os.path.basename(plot)})"]
    timed = [r for r in rows if r.runtime]
    lines += ["", "## Interpreter runtime", ""]
    if timed:
        lines += [
            "Median time per call of `jit(vmap(interpreter.jacobian(f, best order)))` for per-example",
            f"Jacobians at batch {RUNTIME_BATCH}, beside `jit(vmap(jax.jacfwd(f)))` and `jit(vmap(jax.jacrev(f)))`",
            "in the same run (ratio above 1: ours is faster). A shared machine makes single numbers vary;",
            "`benchmarks/jacobian_runtime.py` measures more orders and batch sizes (docs/benchmarks.md).",
            "",
            "| task | best order (muls) | ours ms | jacfwd ms | jacrev ms | jacfwd / ours | jacrev / ours |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in timed:
            t = row.runtime
            lines.append(
                f"| {row.spec} | {row.best} | {t['ours']:.3f} | {t['jacfwd']:.3f} | {t['jacrev']:.3f} "
                f"| {t['jacfwd'] / t['ours']:.2f} | {t['jacrev'] / t['ours']:.2f} |"
            )
    else:
        lines.append("Not measured in this run (`alphagrad bench --no-runtime`); see docs/benchmarks.md.")
    lines.append("")
    return "\n".join(lines)


def write_plot(rows: Sequence[BenchRow], path: str) -> bool:
    """A bar chart of each method's cost relative to the published count (or to reverse mode).
    Returns False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    methods = ["markowitz", "heuristics", "beam", "sa", "best"]
    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.6 * len(rows))), 4.5))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        values = []
        for row in rows:
            ref = row.published if row.published is not None else row.baselines["reverse"]
            if m in ("markowitz", "best"):
                c = row.baselines["markowitz"] if m == "markowitz" else row.best
            else:
                c = row.results[m].cost if m in row.results else None
            values.append(c / ref if c is not None else 0.0)
        ax.bar([x + i * width for x in range(len(rows))], values, width, label=m)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))])
    ax.set_xticklabels([r.spec for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("cost / published (ref:) or / reverse mode")
    ax.set_ylim(0.5, 1.6)
    ax.legend(fontsize=8, ncol=len(methods))
    fig.tight_layout()
    image = io.BytesIO()  # rendered in memory, then written atomically: no torn image if interrupted
    fig.savefig(image, format=os.path.splitext(path)[1][1:] or "png", dpi=120)
    plt.close(fig)
    write_atomically(path, image.getvalue())
    return True
