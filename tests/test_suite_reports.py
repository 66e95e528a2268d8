"""A failing test is reported as a failure, and the run goes on, even when a
finalizer raises while pytest formats the failure (see conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

FAILING = '''
import gc
import time

UNTIL = time.monotonic() + 3.0


class HalfBuilt:
    """Like an SDK client whose __init__ raised: garbage in a cycle whose __del__
    fails. Each one collected leaves another behind for 3 s, so the collector
    finds one whenever it runs, as it can while pytest formats a failure."""

    def __init__(self):
        self.me = self

    def __del__(self):
        if time.monotonic() < UNTIL:
            HalfBuilt()
        return self.never_set + 1


def test_fails_with_garbage_around():
    gc.set_threshold(1)
    HalfBuilt()
    assert 0 == 1, "a deliberate failure"


def test_after_the_failure():
    assert True
'''


def run_inner(tmp_path: Path, with_conftest: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(FAILING)
    if with_conftest:
        (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_a_failure_is_reported_and_the_run_continues(tmp_path: Path) -> None:
    result = run_inner(tmp_path, with_conftest=True)
    out = result.stdout + result.stderr
    assert "INTERNALERROR" not in out, out[-3000:]
    assert "a deliberate failure" in out
    assert "1 failed, 1 passed" in out, out[-3000:]
    assert result.returncode == 1
