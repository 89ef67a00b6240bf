"""Cost models beyond the paper's 22 codes and 2-D shapes, built from today's tables for the env's
rank-n tests: a model padded to rank R (unselected factors, dims padded with 1s) and a model with
an alias code (code 12 behaving exactly as code 1). Both must score every graph as the original.

`use_tables` makes the env read a graph's (model, dims) from here, as it will read the per-graph
models of graphs with arrays of rank >= 3 through `alphagrad.env._core._graph_tables`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alphagrad import graph
from alphagrad.env import _core
from alphagrad.graph import MIN_CODE, Edge, Graph

#: The alias code of `alias_model` and the code it copies.
ALIAS, ALIASED = 12, 1


def pad_model(model: graph.CostModel, rank: int) -> graph.CostModel:
    """`model` (rank 2) over `rank` axes: factor (group, i) of the new order (c_1..c_R, v_1..v_R,
    p_1..p_R) is the old factor (group, i) for i < 2 and never selected past them."""
    old = model.mask
    mask = np.zeros((*old.shape[:2], 3 * rank), dtype=bool)
    for group in range(3):  # c, v, p
        for i in range(2):
            mask[..., group * rank + i] = old[..., group * 2 + i]
    return dataclasses.replace(model, mask=mask)


def pad_dims(dims: np.ndarray, rank: int) -> np.ndarray:
    """int[n, 2] -> int[n, rank]: each node's dims followed by 1s."""
    return np.concatenate([dims, np.ones((dims.shape[0], rank - dims.shape[1]), dims.dtype)], axis=1)


def alias_model(model: graph.CostModel) -> graph.CostModel:
    """`model` with one more code, ALIAS, that behaves exactly as ALIASED: its rows and columns of
    mask, mul and add are ALIASED's, and a product or sum that involves ALIAS and would be
    ALIASED is ALIAS (so the new code also appears in results)."""
    C = model.mask.shape[0] + 1
    same = np.arange(C)
    same[ALIAS - MIN_CODE] = ALIASED - MIN_CODE  # table index -> the index it behaves as
    involves = (same[:, None] != np.arange(C)[:, None]) | (same[None, :] != np.arange(C)[None, :])

    def extend(table):
        result = np.asarray(table)[same[:, None], same[None, :]]
        return np.where(involves & (result == ALIASED), ALIAS, result).astype(np.int32)

    mask = np.asarray(model.mask)[same[:, None], same[None, :]]
    unit = set(model.unit_pairs)
    for a, b in model.unit_pairs:  # pairs with ALIASED gain their ALIAS twins
        unit |= {(x, y) for x in (a, ALIAS if a == ALIASED else a) for y in (b, ALIAS if b == ALIASED else b)}
    return dataclasses.replace(model, mask=mask, mul=extend(model.mul), add=extend(model.add), unit_pairs=frozenset(unit))


def relabel(g: Graph) -> Graph:
    """`g` with every ALIASED edge relabelled ALIAS."""
    edges = tuple(Edge(e.src, e.dst, ALIAS if e.code == ALIASED else e.code, e.out_shape, e.in_shape) for e in g.edges)
    return dataclasses.replace(g, edges=edges, name=f"{g.name}-aliased")


def padded(g: Graph, rank: int) -> tuple[graph.CostModel, np.ndarray, np.ndarray]:
    """(model, as_source, as_destination) of `g` padded to `rank`."""
    src, dst = g.node_shapes()
    return pad_model(graph.cost_model(g.cost_model), rank), pad_dims(src, rank), pad_dims(dst, rank)


def aliased(g: Graph, rank: int = 2) -> tuple[graph.CostModel, np.ndarray, np.ndarray]:
    """(model, as_source, as_destination) of `relabel(g)`, padded to `rank`."""
    model, src, dst = padded(g, rank) if rank > 2 else (graph.cost_model(g.cost_model), *g.node_shapes())
    return alias_model(model), src, dst


def use_tables(monkeypatch, tables: dict[Graph, tuple[graph.CostModel, np.ndarray, np.ndarray]]) -> None:
    """Makes the env read the (model, as_source, as_destination) of each graph in `tables` (by
    identity) from it; other graphs read their own."""
    original = _core._graph_tables
    by_id = {id(g): (g, value) for g, value in tables.items()}

    def graph_tables(g):
        hit = by_id.get(id(g))
        return hit[1] if hit is not None and hit[0] is g else original(g)

    monkeypatch.setattr(_core, "_graph_tables", graph_tables)
