"""The quickstart notebook runs top to bottom in a Jupyter kernel, and is committed without outputs.

The kernel is a separate process that starts its own local Ray, so these tests
do not use the ``ray_local`` fixture.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell
from traitlets import default

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
QUICKSTART = NOTEBOOKS / "01_quickstart.ipynb"
KERNEL = "python3"


def _kernel_manager_class(spec_root: Path) -> type[AsyncKernelManager]:
    """A kernel manager whose ``python3`` kernel runs this interpreter.

    The ``python3`` kernelspec of the venv's ipykernel already does (jupyter_client
    replaces its ``python`` with ``sys.executable``), but a user-level kernelspec
    can shadow it with another Python, one that may not have raystream. Then a
    kernelspec in ``spec_root`` is used instead; nothing is registered globally.
    """
    if AsyncKernelManager(kernel_name=KERNEL).format_kernel_cmd()[0] == sys.executable:
        return AsyncKernelManager
    spec_dir = spec_root / KERNEL
    spec_dir.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))

    class ThisPythonKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self) -> KernelSpecManager:
            return KernelSpecManager(kernel_dirs=[str(spec_root)])

    return ThisPythonKernelManager


def _outputs_data(cell: nbformat.NotebookNode) -> list[dict[str, str]]:
    return [output.get("data", {}) for output in cell.outputs]


def test_quickstart_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the kernel inherits the environment
    nb = nbformat.read(QUICKSTART, as_version=4)
    last_code_cell = max(i for i, cell in enumerate(nb.cells) if cell.cell_type == "code") + 1
    # Test-only cells: first, which Python the kernel runs; last, shut Ray down, since a
    # kernel with Ray running ignores the shutdown request and gets killed, leaving Ray's
    # agent processes behind for a minute.
    nb.cells.insert(0, new_code_cell("import sys\nprint(sys.executable, end='')"))
    nb.cells.append(new_code_cell("import ray\nray.shutdown()"))

    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name=KERNEL,
        kernel_manager_class=_kernel_manager_class(tmp_path / "kernels"),
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # a failing cell raises CellExecutionError, with the cell and its traceback

    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    assert printed == sys.executable
    ending = _outputs_data(nb.cells[last_code_cell])
    assert any("image/png" in data for data in ending), "the notebook should end with a plot"
    assert any("dataframe" in data.get("text/html", "") for data in ending), "the notebook should end with a DataFrame"


def test_notebook_outputs_are_stripped() -> None:
    nb = nbformat.read(QUICKSTART, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"] == {"name": "python3", "display_name": "Python 3", "language": "python"}
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells
    for index, cell in enumerate(code_cells):
        assert cell.outputs == [], f"code cell {index} has outputs; clear them before committing"
        assert cell.execution_count is None, f"code cell {index} has an execution count; clear it before committing"
