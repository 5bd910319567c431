"""Acceptance: WordCount over ~1M generated words equals collections.Counter at parallelism 1, 2 and 4."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import raystream as rs
from raystream.cli import load_job, main
from raystream.config import SourceConfig

pytestmark = pytest.mark.usefixtures("ray_local")

ROOT = Path(__file__).resolve().parents[2]
WORDCOUNT = load_job(ROOT / "jobs" / "wordcount.py")


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Counter[str]]:
    """About a million Zipf-distributed words in 4 files, with blank lines and mixed case."""
    rng = np.random.default_rng(11)
    vocabulary = np.array(["".join(rng.choice(list("abcdefghij"), size=rng.integers(2, 8))) for _ in range(3000)])
    words = vocabulary[np.minimum(rng.zipf(1.3, size=1_000_000), len(vocabulary)) - 1]
    folder = tmp_path_factory.mktemp("corpus")
    expected: Counter[str] = Counter(words.tolist())
    for part, chunk in enumerate(np.array_split(words, 4)):
        lines = [" ".join(line) for line in np.array_split(chunk, len(chunk) // 10)]
        lines = [line.upper() if i % 7 == 0 else line for i, line in enumerate(lines)]
        (folder / f"part-{part}.txt").write_text("\n\n".join(lines) + "\n")
    return folder, expected


@pytest.mark.parametrize("parallelism", [1, 2, 4])
def test_wordcount_equals_counter(text_corpus: tuple[Path, Counter[str]], parallelism: int) -> None:
    folder, expected = text_corpus
    config = WORDCOUNT.Config(source=SourceConfig(kind="text", path=str(folder)))
    counts = WORDCOUNT.build(config).to_pandas(rs.RunConfig(parallelism=parallelism, max_batch_rows=20_000))
    assert len(counts) == len(expected)
    assert dict(zip(counts["word"], counts["count"], strict=True)) == dict(expected)


def test_wordcount_job_runs_from_its_files_config(capsys: pytest.CaptureFixture[str]) -> None:
    text = (ROOT / "jobs" / "data" / "words.txt").read_text().lower()
    expected = Counter(w for w in re.split(r"[^a-z0-9']+", text) if w)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(["run", "jobs/wordcount.py", "--config", "configs/wordcount-files.yaml"]) == 0
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert f"{len(expected)} rows" in printed
    assert "word  count" in printed


def test_demo_job_prints_clicks_per_user(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(ROOT / "jobs" / "clicks.py"), "--config", str(ROOT / "configs" / "demo.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "20 rows" in printed and "clicks" in printed and "user-0" in printed


def test_cli_reports_a_bad_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("job:\n  source:\n    kind: text\n    pth: x\n")
    assert main(["run", str(ROOT / "jobs" / "wordcount.py"), "--config", str(config)]) == 2
    assert "unknown key 'job.source.pth'" in capsys.readouterr().err
