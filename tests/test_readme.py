"""The README's fine-tuning example runs exactly as written, on a small labelled folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import photo
from .slim_reference import slim_reference

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(rf"<!-- {re.escape(marker)} -->\n```\w*\n(.*?)```", text, re.S)
    assert found, f"README lost its {marker} block"
    return found.group(1)


def test_finetune_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the 2016 file's stand-in, written by TF-Slim's own graph and saver in its old single-file format
    slim_reference(tmp_path / "inception_v2.ckpt", np.full((1, 224, 224, 3), 0.5, np.float32), seed=5, training=False)
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
