"""tools/check_layers.py: the package's parts import downwards only, and it catches every kind of offence."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "check_layers.py"


def _load():
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


check_layers = _load()


def test_the_package_obeys_the_floors():
    result = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _package(tmp_path: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """A fake `alphagrad` package with one module per part, plus `files` (path -> source)."""
    root = tmp_path / "alphagrad"
    for part in check_layers.FLOORS:
        (root / part).mkdir(parents=True, exist_ok=True)
        (root / part / "__init__.py").write_text("")
    (root / "__init__.py").write_text("from alphagrad import cli, graph\nfrom alphagrad.agents._x import y\n")
    for path, source in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(textwrap.dedent(source))
    return root


def _messages(root: pathlib.Path) -> list[str]:
    return [f"{pathlib.Path(o.path).relative_to(root)}:{o.line}: {o.message}" for o in check_layers.check(str(root))]


def test_downward_and_same_part_imports_pass(tmp_path):
    root = _package(tmp_path, {
        "cli/_a.py": "from alphagrad import agents, interpreter\nfrom alphagrad.tasks import load_graph\n",
        "orders/_b.py": "from alphagrad.graph import Graph\nfrom . import _c\nfrom ._c import d\n",
        "orders/_c.py": "import alphagrad.errors\nfrom alphagrad.tasks import x\n",  # same floor
        "graph/_d.py": "from alphagrad.graph._e import f\n",
    })
    assert _messages(root) == []


def test_an_upward_import_inside_a_function_is_caught(tmp_path):
    root = _package(tmp_path, {"graph/_cost.py": "def cost():\n    from alphagrad import orders\n"})
    (message,) = _messages(root)
    assert message.startswith("graph/_cost.py:2: graph (floor 1) imports alphagrad.orders, upward (floor 2)")


def test_a_private_module_of_another_part_is_caught_in_every_spelling(tmp_path):
    root = _package(tmp_path, {
        "env/_gen.py": """\
            from alphagrad.graph._trace import trace
            from alphagrad.graph import _rules
            import alphagrad.graph._structure
            from ..graph._cost import cost
            """,
    })
    messages = _messages(root)
    assert [m.split(":")[1] for m in messages] == ["1", "2", "3", "4"]
    assert all("private to graph" in m for m in messages)
    assert "alphagrad.graph._cost" in messages[3]  # the relative import is resolved


def test_the_package_root_may_not_be_imported(tmp_path):
    root = _package(tmp_path, {"orders/_io.py": "from alphagrad import __version__\nimport alphagrad\n"})
    messages = _messages(root)
    assert len(messages) == 2 and all("from the package root" in m for m in messages)


def test_interpreter_and_agents_must_not_import_each_other(tmp_path):
    root = _package(tmp_path, {"interpreter/_j.py": "import importlib\nimportlib.import_module('alphagrad.agents')\n"})
    messages = _messages(root)
    assert any("interpreter and agents must not import each other" in m for m in messages)
    assert not any("cycle" in m for m in messages)


def test_a_cycle_between_parts_lists_each_of_its_imports(tmp_path):
    root = _package(tmp_path, {
        "interpreter/_j.py": "from alphagrad import agents\n",
        "agents/_p.py": "def f():\n    from alphagrad.interpreter import jacobian\n",
    })
    cycle = [m for m in _messages(root) if "import cycle between agents, interpreter" in m]
    assert [m.split(":")[0] for m in cycle] == ["agents/_p.py", "interpreter/_j.py"]


def test_a_module_outside_the_floor_table_is_reported(tmp_path):
    root = _package(tmp_path, {"plots.py": "import os\n", "cli/_x.py": "from alphagrad.plots import y\n"})
    messages = _messages(root)
    assert any(m.startswith("plots.py:1: alphagrad.plots is in no part") for m in messages)
    assert any(m.startswith("cli/_x.py:1:") and "no floor" in m for m in messages)


def test_the_command_prints_offences_and_exits_1(tmp_path):
    root = _package(tmp_path, {"graph/_x.py": "from alphagrad import orders\n"})
    result = subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "_x.py:1: graph (floor 1) imports alphagrad.orders, upward" in result.stdout
