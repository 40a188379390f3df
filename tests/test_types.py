"""The type checker runs in CI: mypy over the files pyproject.toml's
[tool.mypy] names (the rule language, engine, policy, conversation core and
the layers above them), and passes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.server import REPO


def test_mypy_passes(tmp_path):
    pytest.importorskip("mypy", reason="mypy is in the test extra: pip install -e '.[test]'")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
