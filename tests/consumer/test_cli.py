"""The ``streamseg`` entry point itself: exit statuses shared by every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """``streamseg ... | head``: a closed pipe is status 141, as for any command a shell
    pipes, without a BrokenPipeError traceback."""
    command = [sys.executable, "-m", "consumer.cli", "generate", "--users", "300", "--days", "2"]
    writer = subprocess.Popen(
        [*command, "--no-kafka", "--out", "-", "--no-progress"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert writer.stdout is not None and writer.stderr is not None
    assert len(writer.stdout.read(100)) == 100
    writer.stdout.close()
    errors = writer.stderr.read().decode()
    assert writer.wait(timeout=60) == 141
    assert "Traceback" not in errors and "BrokenPipeError" not in errors
