"""Rules of the house that no linter checks: no module reaches into another's private names, and no source file
grows past 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "flows", "pipelines", "models", "filters", "registry", "toyworld", "bench")
MAX_LINES = 600


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def private_uses(path: Path) -> list[str]:
    """``from a.b import _x`` and ``mod._x`` where ``mod`` names a project module, in ``path``."""
    tree = ast.parse(path.read_text())
    project_modules: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: from {node.module} import {alias.name}")
                elif (ROOT / node.module.replace(".", "/") / f"{alias.name}.py").is_file():
                    project_modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES and alias.asname:
                    project_modules.add(alias.asname)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in project_modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):  # fmt: skip
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    found = [use for path in sources() for use in private_uses(path)]
    assert not found, "make the name public, or keep its use inside its module:\n" + "\n".join(found)


def test_the_private_name_check_finds_both_forms():
    bad = ROOT / "bench" / "_probe_for_the_rule.py"
    bad.write_text("from pipelines.latent_cache import _counts\nfrom pipelines import curate_images as job\n"
                   "job._secret\n")  # fmt: skip
    try:
        assert [u.split(": ", 1)[1] for u in private_uses(bad)] == ["from pipelines.latent_cache import _counts",
                                                                     "job._secret"]  # fmt: skip
    finally:
        bad.unlink()


def test_no_source_file_is_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in sources() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these (tests and generated files aside, {MAX_LINES} lines at most): {long}"
