import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_boundaries_hold():
    """import-linter checks every contract of pyproject.toml against the code."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_encode_the_house():
    """The arrows of the README's architecture section, each a forbidden-import contract of pyproject.toml."""
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = {}
    for c in contracts:
        assert c["type"] == "forbidden", c["name"]
        for source in c["source_modules"]:
            forbidden.setdefault(source, set()).update(c["forbidden_modules"])
    project = {"flows", "pipelines", "models", "filters", "registry", "toyworld", "bench"}
    assert project | {"torch", "ray", "prefect"} <= forbidden["contracts"]
    assert "registry" in forbidden["pipelines"] and "flows" in forbidden["pipelines"]
    assert {"pipelines", "models", "flows"} <= forbidden["registry"]
    assert {"pipelines", "flows"} <= forbidden["models"]
    assert all("prefect" in forbidden[p] for p in project - {"flows", "bench"} | {"contracts"})
    assert all("ray" in forbidden[p] for p in project - {"pipelines", "bench"} | {"contracts"})
