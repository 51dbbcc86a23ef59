"""A small chaos run in the suite; `python -m tests.chaos --jobs N --kills K --seed S` for longer ones."""
from __future__ import annotations

import pytest

from .chaos import chaos


@pytest.mark.parametrize("seed", [11, 12])
def test_kill_9_at_random_moments_never_pays_twice_or_loses_a_video(tmp_path, seed):
    summary = chaos(jobs=20, kills=4, seed=seed, workdir=tmp_path)
    assert summary["killed"] >= 1
    assert summary["states"].get("completed", 0) >= 10
