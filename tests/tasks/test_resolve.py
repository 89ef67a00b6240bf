"""The one resolver of TASK arguments: `tasks.resolve` and `tasks.load_graph`."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import pytest

from alphagrad import graph, interpreter, tasks
from alphagrad.errors import AlphagradError


def test_a_registered_task_gives_its_function_and_a_graph_per_cost_model():
    task = tasks.resolve("PropaneCombustion")
    registered = tasks.get("PropaneCombustion")
    assert task.fn is registered.fn and len(task.args) == len(registered.args) and task.reference is None
    g = task.graph()
    assert g is task.graph() and g.name == "PropaneCombustion" and g.cost_model == "alphagrad-2024"
    assert g.fingerprint == graph.trace(registered.fn, *registered.args).fingerprint
    exact = task.graph("exact")
    assert exact is task.graph("exact") and exact.cost_model == "exact"
    # The exact-model graph is the one the interpreter runs.
    argnums = tuple(range(len(task.args)))
    assert exact.fingerprint == interpreter.graph_of(task.fn, *task.args, argnums=argnums).fingerprint


def test_load_graph_is_the_resolvers_default_graph():
    assert tasks.load_graph("RoeFlux_1d").fingerprint == tasks.resolve("RoeFlux_1d").graph().fingerprint
    assert tasks.load_graph("ref:PropaneCombustion") is not None


def test_a_reference_graph_has_no_function_and_only_its_own_model():
    task = tasks.resolve("ref:PropaneCombustion")
    assert task.fn is None and task.args == ()
    g = task.graph()
    assert g.name == "ref:PropaneCombustion" and graph.cost(g, "reverse") == 90
    assert task.graph("alphagrad-2024") is g
    with pytest.raises(AlphagradError, match="no JAX function to trace under 'exact'"):
        task.graph("exact")
    with pytest.raises(AlphagradError, match="takes no example inputs"):
        task.with_args(())


def test_a_module_function_with_its_args_spec():
    task = tasks.resolve("jax.numpy:sin", args="f32[3]")
    assert task.fn is jnp.sin and task.args[0].shape == (3,)
    assert task.graph().name == "jax.numpy:sin" and task.graph().num_inputs == 1


def test_with_args_traces_the_function_at_other_inputs():
    task = tasks.resolve("jax.numpy:sin", args="f32[3]")
    wider = task.with_args((jnp.ones(5, jnp.float32),))
    assert wider.graph().input_shapes != task.graph().input_shapes
    assert task.args[0].shape == (3,)  # the original is unchanged


def test_a_corpus_function_resolves_with_its_argnums_and_stays_out_of_the_registry():
    corpus = tasks.corpus()
    assert not set(corpus) & set(tasks.names())
    # jax.jacrev cannot differentiate while loops, rounds the float32 parameters' blocks of a
    # float64 model to float32 (jax.jacfwd and alphagrad keep float64) and the blocks of float16 /
    # bfloat16 arguments of a float32 output to their dtype, and has NaN behind a masked zero norm
    # where jax.jacfwd is finite.
    assert {n for n, t in corpus.items() if t.reference_jacobian == "jacfwd"} == {
        "fori_dynamic", "newton_sqrt", "cubic_root_newton", "mixed_precision_dense",
        "float_clock_while", "nested_while", "while_dict_state", "tolerance_while", "bisection_cube_root",
        "cosine_similarity_zero_row", "padded_token_normalise", "armijo_backtracking",
        "float16_argument_upcast", "bfloat16_weights_matmul", "adaptive_heun_while_maxsteps"}
    assert all(t.description and t.name == n for n, t in corpus.items())
    task = tasks.resolve("corpus:window")  # window(x, start): the integer offset is not differentiated
    assert task.fn is corpus["window"].fn and task.argnums == 0 and task.reference is None
    g = task.graph("exact")
    assert g.name == "corpus:window" and g.num_inputs == 1
    assert g.fingerprint == interpreter.graph_of(task.fn, *task.args, argnums=0).fingerprint


def _resolution_sample(corpus, groups) -> list[str]:
    """The first corpus function of each group and of each kind of argument list (pytrees of
    differentiated leaves, non-differentiated arguments): tracing all 131 here repeated what
    tests/interpreter/test_corpus.py traces anyway, at a minute of suite time."""
    firsts: dict = {}
    for name, task in corpus.items():
        argnums = (task.argnums,) if isinstance(task.argnums, int) else task.argnums
        pytree = any(not hasattr(task.args[i], "shape") for i in argnums)
        undifferentiated = len(argnums) < len(task.args)
        for key in (groups[name], (pytree, undifferentiated)):
            firsts.setdefault(key, name)
    return sorted(set(firsts.values()))


def test_every_corpus_function_resolves_to_a_graph_of_its_differentiated_leaves():
    """Pytree arguments (dicts of parameters) count one input per leaf; integer arguments none."""
    groups, corpus = tasks.corpus_groups(), tasks.corpus()
    sample = _resolution_sample(corpus, groups)
    assert len(sample) >= 12
    for name, task in corpus.items():
        argnums = (task.argnums,) if isinstance(task.argnums, int) else task.argnums
        leaves = jax.tree.leaves([task.args[i] for i in argnums])
        assert all(jnp.issubdtype(jnp.result_type(leaf), jnp.floating) for leaf in leaves), name
        assert groups[name] in {"layers", "losses", "residuals", "integrators", "particles", "robotics", "stencils",
                                "control flow", "indexing", "sort and scan", "linear algebra", "other"}, name
        if name in sample:
            g = tasks.resolve(f"corpus:{name}").graph("exact")
            assert g.num_inputs == len(leaves) and g.vertices, name


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("NoSuchTask", {}, "unknown task 'NoSuchTask'.*RoeFlux_1d.*ref:NAME, corpus:NAME or module:function"),
        ("ref:nope", {}, "no reference graph 'nope'"),
        ("corpus:nope", {}, "no corpus function 'nope'; known: corpus:euler_integrator, "),
        ("no_such_module_xyz:f", {"args": "f32[3]"}, "cannot load function"),
        ("jax.numpy:no_such_function", {"args": "f32[3]"}, "cannot load function"),
        ("jax.numpy:sin", {}, "needs example inputs"),
        ("jax.numpy:sin", {"args": "i32[3]"}, "cannot read input spec"),
    ],
)
def test_bad_specs_are_clear_errors(spec, kwargs, message):
    with pytest.raises(AlphagradError, match=message):
        tasks.resolve(spec, **kwargs)
    with pytest.raises(AlphagradError, match=message):
        tasks.load_graph(spec, **kwargs)


# ---- module:function from the current directory (issue 14 item 12) -------------------------------


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch):
    """tmp_path as the current directory, not on sys.path (as for the `alphagrad` script); sys.path
    and the modules imported from tmp_path are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if str(tmp_path) in (getattr(sys.modules[name], "__file__", None) or ""):
            del sys.modules[name]


def test_a_module_in_the_current_directory_is_found_like_python_m(in_tmp_cwd):
    (in_tmp_cwd / "mymod.py").write_text("import helper\n\ndef f(x):\n    return helper.g(x)\n")
    # A neighbour imported only when the function runs (here: traced) is found too: the directory stays.
    (in_tmp_cwd / "helper.py").write_text("import jax.numpy as jnp\n\ndef g(x):\n    return jnp.sin(x) * x\n")
    task = tasks.resolve("mymod:f", args="f32[3]")
    assert task.fn.__module__ == "mymod" and task.args[0].shape == (3,)
    assert task.graph().num_inputs == 1 and graph.cost(task.graph(), "reverse") > 0
    assert sys.path[0] == str(in_tmp_cwd)


@pytest.mark.parametrize(
    ("source", "spec", "message"),
    [
        (None, "absent_mod:f", r"no module 'absent_mod' in the current directory \(.*\).*PYTHONPATH"),
        ("import absent_dependency\n", "mymod:f", "importing mymod failed: No module named 'absent_dependency'"),
        ("def f(:\n", "mymod:f", "importing mymod raised SyntaxError"),
        ("f = 3\n", "mymod:f", r"mymod.f is not callable \(int\)"),
        ("def g(x):\n    return x\n", "mymod:f", r"module mymod \(.*mymod.py\) has no attribute 'f'"),
        (None, ":f", "write module:function"),
        (None, "mymod:", "write module:function"),
        (None, ".mymod:f", "write module:function"),
    ],
)
def test_a_module_function_that_cannot_be_loaded_says_why(in_tmp_cwd, source, spec, message):
    if source is not None:
        (in_tmp_cwd / "mymod.py").write_text(source)
    with pytest.raises(AlphagradError, match=message) as info:
        tasks.resolve(spec, args="f32[3]")
    assert f"cannot load function {spec!r}" in str(info.value)
