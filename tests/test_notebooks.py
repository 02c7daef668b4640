"""Notebook paths that nbmake's plain run (every notebook as shipped, under `pytest`) does not take."""

import nbformat
from nbclient import NotebookClient

from explorer.released.synthetic import tiny_dit_config, write_tiny_dit, write_tiny_llada
from support import ROOT


def run_notebook(name: str) -> str:
    """Execute notebooks/NAME in a kernel started in the notebook's own folder, as JupyterLab and nbmake do (it
    inherits this process's environment); returns the text of every output."""
    path = ROOT / "notebooks" / name
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def test_released_notebook_runs_on_the_folders_its_environment_names(tmp_path, monkeypatch):
    """The path the released-models appendix tells readers to take: LLADA_PATH (and BD3LM_PATH) name downloaded
    folders. Stand-ins with the released layouts, an end-of-turn token and a chat template, as LLaDA-8B-Instruct
    has."""
    llada = write_tiny_llada(tmp_path / "LLaDA-8B-Instruct", seed=1, eot=True)
    bd3lm = write_tiny_dit(tmp_path / "bd3lm-owt-block_size4", tiny_dit_config("bd3lm"), seed=1)
    monkeypatch.setenv("LLADA_PATH", str(llada))
    monkeypatch.setenv("BD3LM_PATH", str(bd3lm))
    outputs = run_notebook("appendix/released_models.ipynb")
    assert str(llada) in outputs and "LLaDA-tiny" not in outputs  # the folder given, not the notebook's own
    assert "What is a masked diffusion language model?" in outputs  # the Instruct question, through the template
    assert "bd3lm family, block size 4" in outputs
