"""The architecture's rules, checked: a method is one module plus one YAML (no registry), and the
package has no import circles and keeps its layers (methods never import calibration or the study)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY

SRC = ROOT / "src" / "prunelab"
EXTERNAL = ROOT / "tests" / "fixtures" / "external_method"


def test_a_method_defined_outside_the_package_runs_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXTERNAL), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "run.py", *TINY, "method=power_wanda", "sparsity=0.25", "method.power=3",
         f"hydra.searchpath=[file://{EXTERNAL / 'conf'}]", f"hydra.run.dir={tmp_path}/run"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["status"] == "completed" and record["plan"]["method"] == "power_wanda"
    assert record["config"]["method"]["power"] == 3
    metrics = record["metrics"]
    # Compared per row: every row of every layer loses floor(in * 0.25) weights, so all layers
    # sit at exactly 0.25 (in = 64 or 128).
    assert set(metrics["prune/layer_sparsity"].values()) == {0.25}
    assert metrics["time/calibration_s"] > 0


def _imports(path: Path) -> set[str]:
    """Every prunelab module a file imports, at any depth (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prunelab"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("prunelab"))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_circles_in_the_package():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("lower,forbidden", [
    ("prunelab.methods", ("prunelab.calibration", "prunelab.prune", "prunelab.pipeline", "prunelab.plan",
                          "prunelab.study", "prunelab.caches", "prunelab.config")),
    ("prunelab.stats", ("prunelab.",)),
    ("prunelab.structure", ("prunelab.",)),
    ("prunelab.checks", ("prunelab.",)),
    ("prunelab.locations", ("prunelab.",)),
    ("prunelab.patterns", ("prunelab.methods", "prunelab.calibration", "prunelab.study")),
    ("prunelab.calibration", ("prunelab.methods", "prunelab.prune", "prunelab.study")),
    ("prunelab.study.records", ("prunelab.study.aggregate", "prunelab.study.figures", "prunelab.study.report",
                                "prunelab.study.tracking", "prunelab.pipeline")),
])
def test_layers_import_only_downwards(lower, forbidden):
    graph = import_graph()
    for module, imported in graph.items():
        if module == lower or module.startswith(lower + "."):
            allowed = {"prunelab.checks"} if lower != "prunelab.checks" else set()
            bad = sorted(m for m in imported if m.startswith(forbidden) and m not in allowed)
            assert not bad, f"{module} imports {bad}"


def test_no_registry_and_no_name_sniffing():
    """Components are picked by ``_target_``; no module switches on a method, logger or engine name."""
    text = "\n".join(p.read_text() for p in SRC.rglob("*.py") if "study" not in p.parts)
    for smell in ('startswith("owl_")', "_REGISTRY", "build_method", 'kind == "wandb"', 'name == "cpu"',
                  'source == "embedded"'):
        assert smell not in text, smell


@pytest.mark.slow
def test_a_non_editable_install_carries_the_configs(tmp_path):
    """``pip install .`` (not editable) ships ``conf/`` inside the package: compose() works from any
    directory with no checkout around (the checkout is copied, so its own tree stays untouched)."""
    import shutil

    source = tmp_path / "source"
    for name in ("src", "conf", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__", "local")}
                                           if (ROOT / name).is_dir() else {}))
    venv = tmp_path / "venv"
    # --without-pip: the system's pip and setuptools serve the venv (a bundled old setuptools cannot build wheels)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
                             capture_output=True, text=True, timeout=300, env=env)
    assert install.returncode == 0, install.stderr[-3000:]
    shutil.rmtree(source)  # nothing of the checkout is left to fall back on
    probe = ("import prunelab.config as c; cfg = c.compose('method=flap'); "
             "print(c.CONF_DIR); print(cfg.method.name, sorted(p.stem for p in (c.CONF_DIR / 'method').glob('*.yaml')))")
    result = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    conf_dir, found = result.stdout.splitlines()
    assert conf_dir.startswith(str(venv)) and conf_dir.endswith("prunelab/conf")
    assert found.startswith("flap ") and "wanda_sp" in found
