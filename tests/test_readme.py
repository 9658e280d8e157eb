"""The README's fine-tuning example runs exactly as written, on a small labelled folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simsearch.models import random_inception_v2, save_slim_checkpoint

from .conftest import photo

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```\w*\n(.*?)```", text, re.S)
    assert found, f"README lost its {marker} block"
    return found.group(1)


def test_finetune_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_slim_checkpoint(random_inception_v2(seed=5), tmp_path / "inception_v2.ckpt")  # stands in for the 2016 file
    for label, seeds in (("cats", range(0, 5)), ("dogs", range(5, 10))):
        for s in seeds:
            photo(tmp_path / "labelled" / label / f"{s}.jpg", seed=s, size=(300, 200))
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_block("example:finetune"), "README.md", "exec"), {})
    assert (tmp_path / "inception_v2_finetuned" / "saved_model.pb").exists()

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(readme_block("example:finetune-index"), shell=True, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "10 added" in done.stdout
