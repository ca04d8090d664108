"""notebooks/pyspark-quickstart.ipynb executed by Jupyter's own machinery (nbclient, a real ipykernel) in a
fresh kernel, as a reader runs it: its own asserts check what it tells the reader to expect, the loss curve
must render inline, and Spark's INFO logging must stay out. The executed copy lands in python/target/."""
import nbformat
from conftest import ROOT
from nbclient import NotebookClient


def test_pyspark_quickstart_runs_in_a_fresh_kernel(tmp_path):
    path = ROOT / "notebooks" / "pyspark-quickstart.ipynb"
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError (with the cell and traceback) if any cell fails
    finally:  # the executed notebook, outputs and all, for a look after the run
        out = ROOT / "python" / "target" / ("executed-" + path.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(out))
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the loss curve is shown inline"
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert " INFO " not in text, "Spark's INFO lines leaked into the notebook"
    assert "generated:" in text

