"""The dependency direction of DESIGN §1: models -> layers -> attention -> pallas_kernels."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "pallas_kernels": ("lla.attention", "lla.layers", "lla.models", "lla.training",
                       "lla.diffusion", "lla.data", "flax"),
    "attention": ("lla.layers", "lla.models", "lla.training", "lla.diffusion", "flax"),
    "layers": ("lla.models", "lla.training", "lla.diffusion"),
}


def imported_modules(path: pathlib.Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module)
    return modules


def violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / "lla" / package).rglob("*.py")):
        for module in imported_modules(path):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package):
    assert (ROOT / "lla" / package).is_dir()
    assert violations(package, FORBIDDEN[package]) == []


def test_library_never_imports_experiments_or_configs():
    assert violations(".", ("experiments", "configs", "tests")) == []


def test_checker_sees_forbidden_imports(tmp_path, monkeypatch):
    bad = tmp_path / "lla" / "attention"
    bad.mkdir(parents=True)
    (bad / "bad.py").write_text("import flax.linen as nn\nfrom lla.models import dit\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert len(violations("attention", FORBIDDEN["attention"])) == 2
