"""The layers of docs/architecture.md, checked: no module imports from a layer above its own (parsed with `ast`,
function-level imports included), and no module edits sys.path."""

from __future__ import annotations

import ast
from pathlib import Path

import explorer

PACKAGE = Path(explorer.__file__).resolve().parent

# unit -> the units it may import (a unit is a subpackage or a top-level module of explorer; "api" is
# explorer/__init__.py: load / generate / stream). Kept in step with docs/architecture.md.
LOWER = {
    "kernels": set(),
    "data": set(),
    "nn": {"kernels"},
    "models": {"data", "nn", "kernels"},
    "released": {"data", "nn", "models"},
    "hub": {"data", "models", "released"},
    "sampling": {"data", "kernels", "models"},
    "viz": {"data", "sampling"},
    "api": {"hub", "sampling", "kernels"},
}
BESIDE = {  # the wings that use the core and never the other way round
    "eval": {"data", "models", "hub", "sampling", "kernels", "api"},
    "brier": {"data", "models", "hub", "sampling", "kernels", "api", "eval"},
    "distill": {"data", "sampling"},
    "train": {"data", "nn", "models", "hub", "distill"},
    "train_autoencoder": {"data", "models", "train", "eval"},
    "bench": {"data", "nn", "models", "released", "hub", "sampling", "viz", "kernels", "api", "eval", "brier",
              "page"},
    "cards": {"data", "models", "hub", "sampling", "eval", "brier", "bench", "train", "train_autoencoder"},
    "integrations": {"data", "sampling"},
}
TOP = {  # the entry points
    "page": {"data", "models", "released", "hub", "sampling", "viz", "kernels", "api", "eval"},
    "cli": set(LOWER) | set(BESIDE) | {"page"},
    "__main__": {"cli"},
}
ALLOWED = LOWER | BESIDE | TOP


def unit_of(module: str) -> str:
    """explorer.sampling.mdlm -> sampling; explorer -> api."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"


def module_name(path: Path) -> str:
    parts = ("explorer",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_submodule(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).is_dir() or (PACKAGE / relative).with_suffix(".py").is_file()


def imported_units(path: Path) -> set[tuple[str, int]]:
    """(unit, line) of every explorer import in the file, `from explorer import kernels` resolved to kernels."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "explorer":
                names = [f"explorer.{alias.name}" if is_submodule(f"explorer.{alias.name}") else "explorer"
                         for alias in node.names]
        else:
            continue
        found |= {(unit_of(name), node.lineno) for name in names if name.split(".")[0] == "explorer"}
    return found


def test_every_unit_has_a_place_in_the_diagram():
    units = {unit_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert units <= set(ALLOWED), f"add {sorted(units - set(ALLOWED))} to docs/architecture.md and this test"


def test_no_module_imports_from_a_layer_above_its_own():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = unit_of(module_name(path))
        for target, line in sorted(imported_units(path)):
            if target != unit and target not in ALLOWED.get(unit, set()):
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {unit} imports {target}")
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule itself can fail: a models module that imports the page is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from explorer.page import layout\n    from explorer import kernels, load\n")
    assert imported_units(bad) == {("page", 2), ("kernels", 3), ("api", 3)}
    assert "page" not in ALLOWED["models"]


def test_nothing_edits_sys_path():
    files = [*PACKAGE.rglob("*.py"), Path(__file__).with_name("conftest.py")]
    editors = [str(path) for path in files if "sys.path" in path.read_text()]
    assert not editors, f"sys.path edited in {editors}: import the installed package instead"


def test_the_code_passes_ruff():
    """pyproject's [tool.ruff] (line length 120, import order, pyflakes) over the package, tests, scripts and
    notebooks."""
    import subprocess
    import sys

    from support import ROOT

    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                            text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-1000:]
