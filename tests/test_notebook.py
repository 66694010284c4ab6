"""The walkthrough notebook executes from top to bottom (so it cannot rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def test_walkthrough_notebook_executes(tmp_path):
    # A separate process: the notebook starts and stops its own SparkSession.
    script = (
        "import nbformat, sys\n"
        "from nbclient import NotebookClient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "NotebookClient(nb, timeout=900, kernel_name='python3').execute()\n"
        "nbformat.write(nb, sys.argv[2])\n"
    )
    executed = tmp_path / "executed.ipynb"
    env = {**os.environ, "LEUKSPARK_NOTEBOOK_LAKE": str(tmp_path), "PYSPARK_PYTHON": sys.executable}
    completed = subprocess.run([sys.executable, "-c", script, str(NOTEBOOK), str(executed)],
                               capture_output=True, text=True, env=env, timeout=1200)
    assert completed.returncode == 0, completed.stderr[-3000:]

    import nbformat

    notebook = nbformat.read(executed, as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4
    text = "".join(o.get("text", "") for o in outputs)
    assert "test acc" in text and "probability_AML" in text
    assert (tmp_path / "report" / "report.html").exists()
