"""bench/results in git holds what a run reports (JSON, markdown, PNG) and nothing else: profile
dumps and logs go to bench/results/profiles/, which git ignores."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KEPT = {".json", ".md", ".png"}


def _tracked(folder: str) -> list[str]:
    try:
        done = subprocess.run(
            ["git", "ls-files", "-z", "--", folder],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout with git at hand: {error}")
    return [name for name in done.stdout.decode().split("\0") if name]


def test_bench_results_tracks_only_json_markdown_and_png() -> None:
    tracked = _tracked("bench/results")
    assert tracked, "no run's results are tracked: the report docs/performance.md quotes is gone"
    others = [name for name in tracked if Path(name).suffix not in KEPT]
    assert others == [], f"only {sorted(KEPT)} belong in bench/results; git rm {others}"


def test_profile_dumps_are_ignored_by_git() -> None:
    done = subprocess.run(
        ["git", "check-ignore", "-q", "bench/results/profiles/pyspy-validate.txt"],
        cwd=ROOT,
        check=False,
        timeout=30,
    )
    if done.returncode == 128:
        pytest.skip("not a git checkout")
    assert done.returncode == 0, "bench/results/profiles/ must be git-ignored"
