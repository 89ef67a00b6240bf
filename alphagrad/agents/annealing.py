"""Simulated annealing over complete elimination orders, many chains at once on the jitted core.

B chains each hold an order (every permutation of the intermediates is a valid order). An
iteration proposes one move per chain (insert a vertex at a random position, insert it at most
8 positions away, or swap two vertices), scores all B proposals in one ``jax.vmap`` of the
jitted evaluator (`alphagrad.agents._batch`: bitsets for scalar graphs, `alphagrad.env.step`
otherwise), and accepts with probability ``min(1, exp(-Δ / temperature))``. The temperature
cools geometrically from ``t_start`` to ``t_end`` in each round; every new round restarts the
chains from their own best orders and a quarter of them from the best order overall.

On long programs one scored order costs T·V² state operations (`alphagrad.agents._batch.order_seconds`):
when one jitted call (B x 4 orders) is predicted to take more than a quarter of the time limit,
nothing is built or compiled and the cheapest start order is returned at once
(``info["skipped"]`` says why); and a call is not started when the previous one took longer
than the time left.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alphagrad import orders as orders_lib
from alphagrad.agents._batch import Evaluator
from alphagrad.agents._batch import evaluator as make_evaluator
from alphagrad.agents._batch import order_seconds
from alphagrad.agents._result import (
    Deadline,
    Progress,
    SearchError,
    SearchResult,
    run_within,
)
from alphagrad.graph import Graph, check_order
from alphagrad.graph import cost as graph_cost

__all__ = ["anneal", "propose"]

#: Iterations per jitted call (the time limit is checked between calls).
_ITERS_PER_CALL = 4


def propose(key: jax.Array, order: jax.Array) -> jax.Array:
    """A random neighbour of `order` (int32[T] -> int32[T]); pure, vmappable.

    One of three moves, chosen uniformly: move the entry at a random position i to a random
    position j (shifting those between), the same with |i - j| <= 8, or swap positions i and j.
    """
    order = jnp.asarray(order)
    T = order.shape[0]
    # Explicit int32 everywhere: the default integer is int64 under jax_enable_x64, and the
    # annealing scan's carry must keep one dtype in both modes.
    i32 = jnp.int32
    k_kind, k_i, k_far, k_near, k_sign = jax.random.split(key, 5)
    kind = jax.random.randint(k_kind, (), 0, 3, dtype=i32)
    i = jax.random.randint(k_i, (), 0, T, dtype=i32)
    far = jax.random.randint(k_far, (), 0, T, dtype=i32)
    sign = jnp.where(jax.random.bernoulli(k_sign), i32(1), i32(-1))
    near = jnp.clip(i + sign * jax.random.randint(k_near, (), 1, 9, dtype=i32), 0, T - 1)
    j = jnp.where(kind == 1, near, far)
    k = jnp.arange(T, dtype=i32)
    lo, hi = jnp.minimum(i, j), jnp.maximum(i, j)
    shifted = jnp.where(i < j, k + 1, k - 1)
    insert = jnp.where((k < lo) | (k > hi), k, jnp.where(k == j, i, shifted))
    swap = jnp.where(k == i, j, jnp.where(k == j, i, k))
    return order[jnp.where(kind == 2, swap, insert)]


@functools.cache
def _sweep_fn(ev: Evaluator):
    """Jitted ``(carry, temps float32[K]) -> carry`` running K annealing iterations.

    carry = (key, orders int32[B, T], costs int32[B], best_orders int32[B, T], best_costs int32[B]),
    orders as actions (vertex number - 1).
    """
    score = jax.vmap(lambda acts: ev.play(ev.init, acts).cost)

    def iteration(carry, temp):
        key, orders, costs, best_orders, best_costs = carry
        key, k_prop, k_acc = jax.random.split(key, 3)
        B = orders.shape[0]
        proposals = jax.vmap(propose)(jax.random.split(k_prop, B), orders)
        new_costs = score(proposals)
        delta = (new_costs - costs).astype(jnp.float32)
        accept = (delta <= 0) | (jax.random.uniform(k_acc, (B,), jnp.float32) < jnp.exp(-delta / temp))
        orders = jnp.where(accept[:, None], proposals, orders)
        costs = jnp.where(accept, new_costs, costs)
        improved = costs < best_costs
        best_orders = jnp.where(improved[:, None], orders, best_orders)
        best_costs = jnp.where(improved, costs, best_costs)
        return (key, orders, costs, best_orders, best_costs), None

    @jax.jit
    def sweep(carry, temps):
        return jax.lax.scan(iteration, carry, temps)[0]

    return sweep


def _estimate_temperatures(graph: Graph, starts: list[np.ndarray], seed: int, samples: int = 24) -> tuple[float, float]:
    """(t_start, t_end) from the cost changes of random moves (insertions) around the start
    orders, scored in Python so that nothing is compiled before the time-limited loop."""
    rng = np.random.default_rng(seed)
    base = [graph_cost(graph, [int(a) + 1 for a in o]) for o in starts]
    delta = []
    for n in range(samples):
        o = list(starts[n % len(starts)])
        i, j = rng.integers(0, len(o), size=2)
        o.insert(int(j), o.pop(int(i)))
        delta.append(graph_cost(graph, [int(a) + 1 for a in o]) - base[n % len(starts)])
    worse = np.asarray([d for d in delta if d > 0], dtype=np.float64)
    if worse.size == 0:
        return 1.0, 0.1
    t_start = float(np.median(worse))
    t_end = max(0.3 * float(worse.min()), 1e-3)
    return max(t_start, t_end * 2), t_end


def anneal(
    graph: Graph,
    *,
    seconds: float = 30.0,
    init_orders: Sequence[Sequence[int]] | None = None,
    chains: int = 256,
    rounds: int | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    seed: int = 0,
    max_iterations: int | None = None,
    backend: str = "auto",
    progress: Progress | None = None,
) -> SearchResult:
    """Simulated annealing of elimination orders within a time limit.

    Args:
      graph: the graph.
      seconds: wall-time limit (default 30), compilation included; a call is started only while
        the previous one took less than the time left (one call lasts a few hundredths of a
        second on the reference graphs). Skipped (the cheapest start order is returned) when one
        call is predicted to take more than a quarter of it.
      init_orders: orders (vertex numbers) the chains start from, cycled over the chains
        (default: Markowitz, reverse and forward).
      chains: B, the number of chains scored together (default 256).
      rounds: cooling rounds (default: one per 20 s of budget, at least 1).
      t_start, t_end: temperatures of each round (default: estimated from the cost changes of
        random moves around the start orders: the median increase, and 0.3 x the smallest).
      seed: PRNG seed.
      max_iterations: stop after this many iterations (rounded up to a multiple of 4) even
        before the time limit (default None: run until the time limit).
      backend: evaluator back end, "auto", "bitset" (scalar graphs) or "env".
      progress: called with (best cost, fraction of the budget used) on improvements and at
        least once per second.

    Returns:
      A `SearchResult`; ``info["orders_per_second"]`` is the scoring rate after compilation,
      ``info["skipped"]`` the reason when nothing was scored (else None).
    """
    if chains < 1:
        raise SearchError(f"chains must be at least 1, got {chains}")
    deadline = Deadline(seconds)
    if graph.num_intermediates == 0:
        return SearchResult((), 0, "sa", optimal=True, seconds=deadline.elapsed())
    if not init_orders:
        init_orders = [orders_lib.markowitz(graph), orders_lib.reverse(graph), orders_lib.forward(graph)]
    starts = [np.asarray(check_order(graph, o), dtype=np.int32) - 1 for o in init_orders]
    start_costs = [graph_cost(graph, [int(a) + 1 for a in o]) for o in starts]
    call_seconds = chains * _ITERS_PER_CALL * order_seconds(graph, backend=backend)
    if call_seconds > 0.25 * deadline.left():
        best_i = int(np.argmin(start_costs))
        if progress is not None:
            progress(start_costs[best_i], 1.0)
        reason = (f"one call of {chains} x {_ITERS_PER_CALL} orders is predicted to take {call_seconds:.3g} s, "
                  f"more than a quarter of the {seconds:g} s limit")
        return SearchResult(tuple(int(a) + 1 for a in starts[best_i]), start_costs[best_i], "sa",
                            seconds=deadline.elapsed(),
                            info={"orders_per_second": 0.0, "chains": chains, "compiled_in_time": False,
                                  "skipped": reason})
    ev = make_evaluator(graph, backend=backend)
    start = np.stack([starts[b % len(starts)] for b in range(chains)])
    key = jax.random.PRNGKey(seed)
    est = _estimate_temperatures(graph, starts, seed)
    t0 = float(t_start) if t_start is not None else est[0]
    t1 = float(t_end) if t_end is not None else est[1]
    if not 0 < t1 <= t0:
        raise SearchError(f"need 0 < t_end <= t_start, got t_start={t0}, t_end={t1}")
    n_rounds = rounds if rounds is not None else max(1, int(seconds // 20))
    sweep = _sweep_fn(ev)

    costs = jnp.asarray([start_costs[b % len(starts)] for b in range(chains)], dtype=jnp.int32)
    orders = jnp.asarray(start)
    carry = (key, orders, costs, orders, costs)
    best_i = int(np.argmin(start_costs))
    best_cost, best_order = int(start_costs[best_i]), np.asarray(starts[best_i])
    compiled = True
    if progress is not None:
        progress(best_cost, deadline.fraction())
    evaluations, calls = 0, 0
    rate_start, rate_evals = None, 0
    last_report = deadline.elapsed()
    round_len = max(deadline.left(), 1e-3) / n_rounds
    round_start, current_round = deadline.elapsed(), 0
    last_call = 0.0  # seconds the last call took: the next one is started only if it fits
    while deadline.left() > last_call:
        if max_iterations is not None and calls * _ITERS_PER_CALL >= max_iterations:
            break
        call_start = deadline.elapsed()
        phase = min(1.0, (deadline.elapsed() - round_start) / round_len)
        if phase >= 1.0 and current_round + 1 < n_rounds:  # next round: restart from the bests
            current_round += 1
            round_start, phase = deadline.elapsed(), 0.0
            key, _, _, b_orders, b_costs = carry
            global_best = jnp.asarray(best_order)
            quarter = max(1, chains // 4)
            restart = b_orders.at[:quarter].set(global_best)
            restart_costs = b_costs.at[:quarter].set(best_cost)
            carry = (key, restart, restart_costs, b_orders, b_costs)
        temps = t0 * (t1 / t0) ** np.linspace(phase, min(1.0, phase + 0.002), _ITERS_PER_CALL)
        if calls == 0:  # compiles: give up at the deadline rather than overrun it
            compiled, new_carry = run_within(deadline, lambda c, t: jax.block_until_ready(sweep(c, t)), carry,
                                             jnp.asarray(temps, jnp.float32))
            if not compiled:
                break
            carry = new_carry
        else:
            carry = sweep(carry, jnp.asarray(temps, jnp.float32))
        b_costs = np.asarray(carry[4])
        if calls:  # the first call compiles: it says nothing about the next one
            last_call = deadline.elapsed() - call_start
        calls += 1
        evaluations += chains * _ITERS_PER_CALL
        if calls == 1:  # the first call compiles; measure the rate from here on
            rate_start = deadline.elapsed()
        else:
            rate_evals += chains * _ITERS_PER_CALL
        i = int(np.argmin(b_costs))
        if b_costs[i] < best_cost:
            best_cost, best_order = int(b_costs[i]), np.asarray(carry[3][i])
            if progress is not None:
                progress(best_cost, deadline.fraction())
                last_report = deadline.elapsed()
        elif progress is not None and deadline.elapsed() - last_report > 1.0:
            progress(best_cost, deadline.fraction())
            last_report = deadline.elapsed()
    order = [int(a) + 1 for a in best_order]
    exact_cost = graph_cost(graph, order)
    if exact_cost != best_cost:  # the batched evaluator and the cost model must agree
        raise AssertionError(f"annealing scored {best_cost} but graph.cost gives {exact_cost}")
    rate = rate_evals / (deadline.elapsed() - rate_start) if rate_start and rate_evals else 0.0
    return SearchResult(
        order=tuple(order),
        cost=exact_cost,
        method="sa",
        evaluations=evaluations,
        seconds=deadline.elapsed(),
        info={"orders_per_second": rate, "backend": ev.backend, "chains": chains, "rounds": n_rounds,
              "t_start": t0, "t_end": t1, "compiled_in_time": compiled, "skipped": None},
    )
