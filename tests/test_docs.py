"""Documentation: the op table in docs/ops.md and the README is the registry's; the API
reference builds without warnings; every public module, function, class and method of lla
has a docstring."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pathlib
import pkgutil

import lla

ROOT = pathlib.Path(__file__).resolve().parents[1]


def docs_build():
    spec = importlib.util.spec_from_file_location("docs_build", ROOT / "docs" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_tables_are_generated_from_the_registry():
    build = docs_build()
    assert build.main(["--check"]) == 0, "run: python docs/build.py"
    assert "| `llsa` |" in (ROOT / "docs" / "ops.md").read_text()


def test_api_reference_builds_without_warnings(tmp_path):
    problems = docs_build().build_api(tmp_path)
    assert problems == []
    assert (tmp_path / "lla" / "attention.html").exists()
    assert "token_order" in (tmp_path / "lla" / "attention.html").read_text()


def test_every_public_name_has_a_docstring():
    missing = []
    for info in pkgutil.walk_packages(lla.__path__, "lla."):
        module = importlib.import_module(info.name)
        if not (module.__doc__ or "").strip():
            missing.append(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if not (obj.__doc__ or "").strip():
                missing.append(f"{info.name}.{name}")
            if inspect.isclass(obj):
                missing.extend(f"{info.name}.{name}.{method}" for method, member
                               in vars(obj).items() if not method.startswith("_")
                               and inspect.isfunction(member)
                               and not (member.__doc__ or "").strip())
    assert missing == []
