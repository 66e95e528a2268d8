"""docs/pipecat.md: its sample runs as written, and its translation table is the adapter's."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pipecat")

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "pipecat.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_the_sample_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "sample.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=90, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Hello from pipecat's OpenAI service." in result.stdout


def test_the_page_shows_the_table_the_adapter_uses() -> None:
    from vantum_pipeline.interop.pipecat_frames import markdown_table

    assert markdown_table() in PAGE.read_text()
    assert BLOCKS
