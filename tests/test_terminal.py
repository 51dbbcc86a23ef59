"""The live progress display in a real terminal (a tmux pane of 80 and 160 columns)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from .conftest import MANIFESTS

TMUX = shutil.which("tmux")


@pytest.mark.skipif(not TMUX and not os.environ.get("CI"), reason="tmux is not installed")
@pytest.mark.parametrize("width", [80, 160])
def test_progress_redraws_in_place_within_the_terminal_width(tmp_path, width):
    session = f"batcher-{uuid.uuid4().hex[:8]}"
    command = (f"cd {tmp_path} && {sys.executable} -m batcher run {MANIFESTS / 'demo.yaml'} --simulate "
               f"--sim-render-seconds 1.5 -c 4; sleep 60")
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHER_LEDGER", "PIXELDOJO_API_KEY")}
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", str(width), "-y", "30", command],
                   check=True, env=env)
    try:
        seen_bars = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True, check=True).stdout.splitlines()
            bars = [line for line in screen if line.startswith("[#") or line.startswith("[.")]
            if bars:
                seen_bars.append(bars)
            if any(line.startswith("credits:") for line in screen):
                break
            time.sleep(0.3)
        assert seen_bars, "no progress bar was seen"
        for bars in seen_bars:
            assert len(bars) == 1  # redrawn in place: never a second progress line
            assert len(bars[0].rstrip()) <= width - 1
        assert not [line for line in screen if line.startswith("[#") or line.startswith("[.")]  # cleared at the end
        assert any("12 completed" in line for line in screen)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
