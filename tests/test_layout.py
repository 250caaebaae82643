"""The dependency direction of DESIGN §1: models -> layers -> attention -> pallas_kernels, and
a training loop that knows no model family or objective by name."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# package -> forbidden imports; "x.*" forbids the submodules of x but not x itself (the
# registries `lla.models` and `lla.objectives` are how training finds them by name).
FORBIDDEN = {
    "pallas_kernels": ("lla.attention", "lla.layers", "lla.models", "lla.training",
                       "lla.objectives", "lla.data", "lla.interop", "flax"),
    "attention": ("lla.layers", "lla.models", "lla.training", "lla.objectives", "lla.data",
                  "lla.interop", "flax"),
    "layers": ("lla.models", "lla.training", "lla.objectives", "lla.interop"),
    "models": ("lla.training", "lla.objectives", "lla.interop"),
    "objectives": ("lla.training", "lla.models", "lla.interop"),
    "training": ("lla.models.*", "lla.objectives.*", "lla.interop"),
    "interop": ("lla.models", "lla.training", "lla.objectives"),
}


def _is_module(name: str, root: pathlib.Path) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(path: pathlib.Path, root: pathlib.Path = ROOT) -> set[str]:
    """Absolute modules `path` imports, `from a import b` counted as `a.b` when b is a module
    of the repository."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names
                           if _is_module(f"{node.module}.{alias.name}", root))
    return modules


def forbids(rule: str, module: str) -> bool:
    if rule.endswith(".*"):
        return module.startswith(rule[:-1])
    return module == rule or module.startswith(rule + ".")


def violations(package: str, forbidden: tuple[str, ...], root: pathlib.Path = ROOT) -> list:
    found = []
    for path in sorted((root / "lla" / package).rglob("*.py")):
        for module in imported_modules(path, root):
            if any(forbids(rule, module) for rule in forbidden):
                found.append(f"{path.relative_to(root)} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    assert (ROOT / "lla" / package).is_dir()
    assert violations(package, FORBIDDEN[package]) == []


def test_library_never_imports_experiments_or_configs():
    assert violations(".", ("experiments", "configs", "tests")) == []


def test_checker_sees_forbidden_imports(tmp_path):
    for package in ("attention", "training", "models"):
        (tmp_path / "lla" / package).mkdir(parents=True)
        (tmp_path / "lla" / package / "__init__.py").write_text("")
    (tmp_path / "lla" / "models" / "dit.py").write_text("")
    (tmp_path / "lla" / "attention" / "bad.py").write_text(
        "import flax.linen as nn\nfrom lla.models import dit\n")
    (tmp_path / "lla" / "training" / "bad.py").write_text(
        "from lla import models\nfrom lla.models import dit\nimport lla.models.dit\n")
    assert len(violations("attention", FORBIDDEN["attention"], tmp_path)) == 3
    assert violations("training", FORBIDDEN["training"], tmp_path) == [
        "lla/training/bad.py imports lla.models.dit"]
