"""Every Python example of the README runs, in order, as a reader would paste them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("ray_local")

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    """The README's Python examples; ``python kafka`` marks those that need a broker (test_kafka.py runs them)."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 3


def test_readme_examples_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__readme__"}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "key_by: unknown column 'usr'; the stream has columns: user, country, price" in printed
    assert "finished" in printed
    assert "window_start" in printed


def test_testing_module_example_runs() -> None:
    """The example in raystream.testing's docstring, which users copy first."""
    import raystream.testing

    example = raystream.testing.__doc__.split("::", 1)[1]
    code = "\n".join(line.removeprefix("    ") for line in example.splitlines())
    exec(compile(code, "raystream/testing.py", "exec"), {"__name__": "__example__"})
