"""Prints the markdown tables of docs/tasks.md: graph sizes and baseline costs, ours beside the reference's.

    python benchmarks/task_table.py > /tmp/tables.md
"""

from __future__ import annotations

from alphagrad import graph, tasks

BASELINES = ("forward", "reverse", "markowitz")


def reference_table() -> str:
    info = graph.reference_info()
    rows = [
        "| graph | inputs | intermediates | outputs | forward | reverse | markowitz (ours) | markowitz (reference) | published (A0) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, g in graph.load_reference().items():
        r = info[name]
        fwd, rev, mm = (graph.cost(g, o) for o in BASELINES)
        assert (fwd, rev) == (r.forward, r.reverse), name
        rows.append(
            f"| ref:{name} | {g.num_inputs} | {g.num_intermediates} | {g.num_outputs} | {fwd} | {rev} | {mm} "
            f"| {r.minimal_markowitz} | {r.best_published} |"
        )
    return "\n".join(rows)


def traced_table() -> str:
    info = graph.reference_info()
    rows = [
        "| task | inputs | intermediates (ref) | outputs | forward (ref) | reverse (ref) | markowitz (ref mM) "
        "| exact model: forward / reverse / markowitz |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in tasks.names():
        task = tasks.resolve(name)
        g = task.graph()
        fwd, rev, mm = (graph.cost(g, o) for o in BASELINES)
        r = info.get(name)
        ref = graph.load_reference()[name] if r else None

        def cell(ours, theirs):
            if theirs is None:
                return str(ours)
            flag = " **≠**" if abs(ours - theirs) > 0.1 * theirs else ""
            return f"{ours} ({theirs}){flag}"

        exact = task.graph("exact")
        exact_costs = " / ".join(str(graph.cost(exact, o)) for o in BASELINES)
        rows.append(
            f"| {name} | {g.num_inputs} | {cell(g.num_intermediates, ref.num_intermediates if ref else None)} "
            f"| {g.num_outputs} | {cell(fwd, r.forward if r else None)} | {cell(rev, r.reverse if r else None)} "
            f"| {cell(mm, r.minimal_markowitz if r else None)} | {exact_costs} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print("## Reference graphs\n")
    print(reference_table())
    print(
        "\n## Traced tasks\n\nAlphaGrad model (ours, the reference's number in brackets; **≠** marks a difference "
        "of more than 10%), and the exact model the interpreter performs.\n"
    )
    print(traced_table())
