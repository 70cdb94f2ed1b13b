"""Small helpers shared by unit and integration tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np


def rows(n: int, seed: int = 0) -> list[list[float]]:
    """`n` random mlp inputs (100 floats each)."""
    return np.random.default_rng(seed).standard_normal((n, 100)).round(5).tolist()


def assert_same_answers(got: list[dict], expected: list[dict]) -> None:
    """Same classes, same probabilities up to float noise (batch size changes summation order)."""
    assert [a["class_id"] for a in got] == [a["class_id"] for a in expected]
    assert np.allclose([a["probabilities"] for a in got], [a["probabilities"] for a in expected], atol=1e-5)


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` as a test author; its stdout, stripped."""
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
