import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_boundaries_hold():
    """prefect only in flows/, ray only in pipelines/, no torch in flows/ or registry/ (pyproject's contracts)."""
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_contracts_cover_the_three_rules():
    text = (ROOT / "pyproject.toml").read_text()
    for rule in ('forbidden_modules = ["prefect"]', 'forbidden_modules = ["ray"]', 'forbidden_modules = ["torch"]'):
        assert rule in text
