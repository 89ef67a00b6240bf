"""Packed product steps (`_tape_products._packed`): under `jax.vmap` a one-operation plan runs
its independent operations of one level (`_levels`) in one step of up to 64 lanes, bit for bit
what the plan computes one operation a step (quaternion_chain_fk's 10,635 steps: 243)."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from alphagrad import graph, interpreter
from alphagrad.graph import _trace
from alphagrad.interpreter import _tape, _tape_products
from alphagrad.interpreter._tape_products import MUL, ONE, SELECT, ZERO, FIRST_EDGE_SLOT


def _sequential(steps: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """One-operation steps ([2 * kind + new, x, y, dst]) one after another, in numpy."""
    edges = edges.copy()
    for code, x, y, dst in steps.tolist():
        a, b = edges[x], edges[y]
        value = a * b if code // 2 == MUL else np.where(b != 0, a * b, 0.0)
        edges[dst] = value if code % 2 else edges[dst] + value
    return edges


def _random_plan(rng, n: int, slots: int) -> np.ndarray:
    """Operations on few slots, so that reads and writes of one slot follow each other closely
    (read after write, write after read, write after write, accumulations into one slot)."""
    kind = rng.choice([MUL, SELECT], size=n, p=[0.8, 0.2])
    new = rng.random(n) < 0.3
    x = rng.integers(FIRST_EDGE_SLOT, slots, n)
    y = rng.integers(FIRST_EDGE_SLOT, slots, n)
    dst = rng.integers(FIRST_EDGE_SLOT, slots, n)
    y = np.where(kind == SELECT, np.where(rng.random(n) < 0.5, ONE, ZERO), y)
    return np.stack([2 * kind + new, x, y, dst], axis=1).astype(np.int32)


@pytest.mark.parametrize("seed, slots", [(0, 12), (1, 40), (2, 400)])
def test_levels_order_every_hazard(seed, slots):
    """Each operation's level is above the levels that write what it reads or writes and not
    below those that read what it writes; operations of one level write distinct slots."""
    steps = _random_plan(np.random.default_rng(seed), 3000, slots)
    level = _tape_products._levels(steps)
    for i, (_, x, y, dst) in enumerate(steps.tolist()):
        before = steps[:i]
        for slot in (x, y, dst):
            writes = level[:i][before[:, 3] == slot]
            assert not len(writes) or level[i] > writes.max()
        reads = level[:i][(before[:, 1] == dst) | (before[:, 2] == dst)]
        assert not len(reads) or level[i] >= reads.max()
    for lv in np.unique(level):
        dsts = steps[level == lv, 3]
        assert len(np.unique(dsts)) == len(dsts)
    # A level is not the plan's order: many operations share one.
    assert level.max() < len(steps) // 2


@pytest.mark.parametrize("lanes", [8, 64])
@pytest.mark.parametrize("seed, slots", [(3, 12), (4, 300)])
def test_packed_steps_compute_the_plan_bit_for_bit(monkeypatch, seed, slots, lanes):
    """`run_steps` on a batch of 16 with packed steps equals the unpacked loop exactly, and the
    operations one after another in numpy."""
    rng = np.random.default_rng(seed)
    steps = _random_plan(rng, 4 * slots, slots)  # a few writes a slot: finite values
    patterns = np.zeros((1, 4, 1), np.int32)
    edges = rng.uniform(-1.0, 1.0, size=(slots, 16))
    edges[rng.random(edges.shape) < 0.1] = 0.0  # zero masks and factors
    edges[ONE], edges[ZERO] = 1.0, 0.0
    expected = _sequential(steps, edges)
    with jax.enable_x64(True):
        def run(edges):
            return _tape_products.run_steps(edges, steps, patterns, False)

        monkeypatch.setattr(_tape_products, "PACKED_LANES", (lanes,))
        monkeypatch.setattr(_tape_products, "PACKED_MIN_BATCH", 16)
        assert _tape_products.packed_lanes(steps, 16) == lanes
        packed = np.asarray(jax.jit(run)(jnp.asarray(edges)))
        assert len(_tape_products._packed(steps, lanes, slots)) < len(steps) // (2 if slots < 100 else 4)
        monkeypatch.setattr(_tape_products, "PACKED_MIN_BATCH", 17)
        assert _tape_products.packed_lanes(steps, 16) == 1
        unpacked = np.asarray(jax.jit(run)(jnp.asarray(edges)))
    assert np.isfinite(expected).all() and np.mean(np.abs(expected) > 1e-3) > 0.5
    np.testing.assert_array_equal(packed, unpacked)
    np.testing.assert_allclose(unpacked, expected, rtol=1e-12, atol=1e-12)  # (XLA may fuse a * b + c)


def test_packed_lanes_follow_the_batch():
    """Small batches keep one operation a step; a wide level takes the widest steps, levels of five
    operations steps of eight lanes, levels of one or two operations one operation a step."""
    wide = np.stack([np.full(4096, 2 * MUL + 1), np.full(4096, ONE), np.full(4096, ONE),
                     np.arange(4096) + FIRST_EDGE_SLOT], axis=1).astype(np.int32)  # one level
    chain = np.stack([np.full(400, 2 * MUL), np.full(400, ONE), np.arange(400) + FIRST_EDGE_SLOT,
                      np.arange(400) + FIRST_EDGE_SLOT + 1], axis=1).astype(np.int32)  # 400 levels
    assert _tape_products.packed_lanes(wide, 1) == 1
    assert _tape_products.packed_lanes(wide, _tape_products.PACKED_MIN_BATCH - 1) == 1
    assert _tape_products.packed_lanes(wide, 256) == max(_tape_products.PACKED_LANES)
    assert _tape_products.packed_lanes(chain, 256) == 1
    pairs = np.concatenate([chain, chain + np.asarray([0, 0, 1000, 1000], np.int32)])  # two chains: levels of two
    pairs = pairs[np.argsort(np.r_[np.arange(400), np.arange(400)], kind="stable")]
    assert np.bincount(_tape_products._levels(pairs))[1:].max() == 2
    assert _tape_products.packed_lanes(pairs, 256) == 1
    fives = wide[:4000].copy()
    fives[:, 1] = np.repeat(fives[::5, 3], 5)  # each group of five reads the previous group's first
    fives[5:, 1] = fives[:-5, 3][::5].repeat(5)[:len(fives) - 5]
    fives[:5, 1] = ONE
    assert np.bincount(_tape_products._levels(fives))[1:].max() == 5
    assert _tape_products.packed_lanes(fives, 256) == 8


def chain(q, v):
    """Scalar arithmetic on quaternion-like 4-vectors, unrolled (products of small partials)."""
    out = []
    for i in range(q.shape[0]):
        a = q[i] / jnp.sqrt(jnp.sum(q[i] * q[i]))
        v = jnp.stack([a[0] * v[0] - a[1] * v[1], a[2] * v[1] + a[3] * v[2], a[1] * v[2] - a[0] * v[0] + v[1]])
        out.append(jnp.where(v > 0, v, 0.5 * v))
    return jnp.stack(out)


def test_packed_jacobian_under_vmap_equals_jacfwd(monkeypatch):
    """A program on the tape, under vmap at a batch of 16 (packed steps) and of 2 (one operation
    a step): jax.jacfwd's Jacobian, and the same numbers either way."""
    monkeypatch.setattr(_tape, "TAPE_MIN_SIZE", 0)
    monkeypatch.setattr(_tape, "TAPE_MIN_EQUATIONS", 0)
    monkeypatch.setattr(_trace, "LABELLED_MAX_EQUATIONS", -1)
    monkeypatch.setattr(_tape_products, "PACKED_MIN_BATCH", 16)
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        q = jnp.asarray(rng.normal(size=(16, 6, 4)))
        v = jnp.asarray(rng.normal(size=(16, 3)))
        g = interpreter.graph_of(chain, q[0], v[0], argnums=(0, 1))
        tape = _tape.build(g, graph.plan(g, graph.resolve_order(g, "reverse")))
        assert tape.prod_steps.shape[1] == 4 and tape.prod_patterns.shape[-1] == 1
        assert _tape_products.packed_lanes(tape.prod_steps, 16) > 1
        assert len(_tape_products._packed(tape.prod_steps, 8, tape.num_edges)) < len(tape.prod_steps) // 2
        jac = jax.jit(jax.vmap(interpreter.jacobian(chain, "reverse", argnums=(0, 1))))
        expected = jax.vmap(jax.jacfwd(chain, argnums=(0, 1)))(q, v)
        packed = jac(q, v)
        for got, want in zip(packed, expected):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
        pair = jac(q[:2], v[:2])
        for got, want in zip(pair, packed):
            np.testing.assert_array_equal(got, want[:2])
