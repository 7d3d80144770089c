"""The quickstart notebook runs end to end (train, evaluate, every figure)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_executes(monkeypatch, tmp_path):
    monkeypatch.setenv("FGSSL_ROOT", str(ROOT))
    monkeypatch.setenv("FGSSL_NB_OUT", str(tmp_path))  # the kernel inherits it: nothing lands outside tmp_path
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # every figure the README names: gradcam, syn_pairs, variance and alpha_sweep (issue 18, item 13)
    assert len(images) == 4
    shown = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    for name in ("gradcam", "syn_pairs", "variance", "alpha_sweep"):
        assert f"{name}\n" in shown, name
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "trained mAP" in text and "untrained mAP" in text
    assert "embeddings (8, " in text and "from last.ckpt" in text  # fgssl.rundir.load_trained
    assert (tmp_path / "base" / "checkpoints" / "last.ckpt").is_file()  # it wrote where it was told
