"""The API reference in docs/ is generated from the docstrings and must not drift from them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_api_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "build_api.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr
