"""A small chaos run in the suite; `python -m tests.chaos --jobs N --kills K --seed S` for longer ones."""
from __future__ import annotations

import pytest

from .chaos import chaos


@pytest.mark.parametrize("seed", [11, 12])
def test_kill_9_at_random_moments_never_pays_twice_or_loses_a_video(tmp_path, seed):
    summary = chaos(jobs=20, kills=4, seed=seed, workdir=tmp_path)
    assert summary["killed"] >= 1
    assert summary["states"].get("completed", 0) >= 10


def test_ledger_outages_after_the_post_never_lose_or_double_pay_a_clip(ledger_url, tmp_path):
    # The ledger unavailable for 3 s as the API charges a submission (the answer then goes to the
    # journal), or at a random moment (waited out, or journaled): both backends.
    summary = chaos(jobs=12, kills=4, seed=21, workdir=tmp_path, ledger=ledger_url,
                    faults=("outage-after-post", "outage-after-post", "outage"))
    assert sum(summary["faults_done"].values()) >= 2
    assert summary["journaled"] >= 1  # some answers came through the journal, none was lost or paid twice
    assert summary["states"].get("completed", 0) >= 8
