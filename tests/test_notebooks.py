"""The notebooks: committed without outputs, importing lit3d's public API, and executing headless against a
smoke sweep and its runs."""
from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from lit3d.sweep import main

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("notebooks")
    args = [str(ROOT / "sweeps" / "vit_grid.yaml"), "variant=smoke", f"output_dir={out / 'sweep'}",
            f"cache_dir={out / 'cache'}"]
    assert main(args) == 0
    return out / "sweep"


def test_notebooks_are_clean():
    assert {p.name for p in NOTEBOOKS} >= {"sweep_analysis.ipynb", "training_curves.ipynb", "pointclouds.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, path.name
        for cell in code:
            for node in ast.walk(ast.parse(cell.source)):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                           else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
                for m in modules:
                    if m.split(".")[0] == "lit3d":  # public API only: no private modules or names
                        assert not any(part.startswith("_") for part in m.split(".") + names), (path.name, m)


def _execute(path: Path, params: str, cwd: Path) -> None:
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell

    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, new_code_cell(params))  # what papermill calls injected parameters
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sweep_analysis", "training_curves", "pointclouds"])
def test_notebook_executes(smoke_sweep, tmp_path, name):
    params = {"sweep_analysis": f"sweep_dir = {str(smoke_sweep)!r}",
              "training_curves": f"sweep_dir = {str(smoke_sweep)!r}\nout_dir = {str(tmp_path)!r}",
              "pointclouds": f"run_dir = {str(smoke_sweep / 'trial-0000')!r}\nout_dir = {str(tmp_path)!r}"}[name]
    _execute(ROOT / "notebooks" / f"{name}.ipynb", params, tmp_path)
    if name != "sweep_analysis":
        assert any(tmp_path.glob("*.png"))
