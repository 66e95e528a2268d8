"""Suite-wide hooks."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Generator
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Property tests judge behaviour, never speed: no per-example deadline and no "too slow" health
# check, which a loaded machine (four test workers on two cores) trips at random.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

_PARSE = ast.parse.__code__


class _DeferredUnraisableHook:
    """Keeps an unraisable exception raised inside ``ast.parse`` for later.

    CPython 3.11's AST constructor keeps its recursion counter in shared module
    state, so it must not be re-entered. But the cyclic GC can run in the middle
    of a parse, and when a collected object's ``__del__`` raises (a half-built
    SDK client whose ``__init__`` failed does), pytest's unraisable hook formats
    that traceback, and 3.11's traceback formatting parses source with ``ast``:
    the outer parse then dies with "SystemError: AST constructor recursion depth
    mismatch". pytest parses source while it formats a failure, so one failing
    test took the whole run down with INTERNALERROR. This hook hands such an
    exception on once the parse is over, and every other one at once.
    """

    def __init__(self, inner: Callable[[Any], object]) -> None:
        self.inner = inner
        self.pending: list[SimpleNamespace] = []

    def __call__(self, unraisable: Any) -> None:
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code is _PARSE:
                self.pending.append(
                    SimpleNamespace(
                        exc_type=unraisable.exc_type,
                        exc_value=unraisable.exc_value,
                        exc_traceback=unraisable.exc_traceback,
                        err_msg=unraisable.err_msg,
                        object=unraisable.object,
                    )
                )
                return
            frame = frame.f_back
        self.flush()
        self.inner(unraisable)

    def flush(self) -> None:
        while self.pending:
            self.inner(self.pending.pop(0))


_hook: _DeferredUnraisableHook | None = None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    global _hook
    _hook = _DeferredUnraisableHook(sys.unraisablehook)
    sys.unraisablehook = _hook


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport() -> Generator[None, object, object]:
    try:
        return (yield)
    finally:
        if _hook is not None:
            _hook.flush()


@pytest.hookimpl(tryfirst=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    global _hook
    if _hook is not None:
        _hook.flush()
        if sys.unraisablehook is _hook:
            sys.unraisablehook = _hook.inner
        _hook = None


# The suite runs on parallel workers (pytest-xdist, ``-n 4 --dist loadfile`` in pyproject.toml):
# most of its wall time is real-time calls waiting on the clock, not CPU. A file is a unit of
# work, and the units are handed out in collection order, so the files whose calls take longest
# start first and the short ones fill the gaps. Seconds measured serially with ``--durations``;
# a file missing here simply starts later, so a stale figure costs minutes, never a failure.
_SLOW_FILES = {
    "test_campaign_telephony.py": 200,
    "test_telephony_calls.py": 165,
    "test_campaign_cluster_calls.py": 125,
    "test_campaign_crash.py": 100,
    "test_barge_in_call.py": 60,
    "test_campaign_calls.py": 40,
    "test_demo_mic_sound_server.py": 40,
    "test_telephony_features.py": 35,
    "test_offline_demo.py": 30,
    "test_campaign_cluster.py": 25,
    "test_twilio_workers.py": 25,
    "test_campaign_reconcile.py": 20,
    "test_twilio_server.py": 20,
    "test_twilio_example.py": 20,
    "test_twilio_call.py": 20,
    "test_interop_pipecat_call.py": 17,
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: -_SLOW_FILES.get(item.path.name, 0))  # stable: order kept within a file


def require_program(program: str, package: str) -> None:
    """Skip (loudly) outside CI when ``program`` is missing; fail in CI, which must install it."""
    import os
    import shutil

    if shutil.which(program) is not None:
        return
    reason = f"{program} is not installed (Debian package {package}; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(f"SERVICE MISSING: {reason}")


@pytest.fixture
def redis_installed() -> None:
    """redis-server is installed: skipped loudly outside CI when it is not, failed in CI."""
    require_program("redis-server", "redis-server")


@pytest.fixture
def redis_server(redis_installed: None) -> Generator[Any, None, None]:
    """A real redis-server on a free port, owned by the test (restart and kill it at will)."""
    from vantum_pipeline.testing.redis_server import RedisServer

    with RedisServer() as server:
        yield server
