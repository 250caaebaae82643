"""The Colab notebooks run top to bottom on the CPU (their CPU sizes) and show what they
claim: each is executed with nbclient and its printed results are checked."""

from __future__ import annotations

import pathlib
import re

import nbformat
import pytest
from nbclient import NotebookClient

COLABS = pathlib.Path(__file__).resolve().parents[2] / "colabs"


def execute(name: str) -> tuple[str, int]:
    """(all text the notebook printed, number of images it drew)."""
    notebook = nbformat.read(COLABS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(COLABS)}}).execute()
    text, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            text.append(output.get("text", ""))
            data = output.get("data", {})
            images += "image/png" in data
            text.append(data.get("text/plain", "") if "image/png" not in data else "")
    return "".join(text), images


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the notebook's output:\n{text[-3000:]}"
    return float(match.group(1))


def test_every_notebook_is_tested():
    assert sorted(p.name for p in COLABS.glob("*.ipynb")) == sorted(NOTEBOOKS)


def check_attention_ops(text, images):
    assert images == 2  # the timing plot and the LLSA selection picture
    assert number(r"\(= dense\)\s+relative difference to dense: (\S+)", text) < 1e-5
    assert number(r"llsa, block 4, top-2\s+relative difference to dense: (\S+)", text) > 1e-2
    assert "fine blocks" in text and "token_order='hierarchy'" in text  # the llsa repr


def check_train_pixel_dit(text, images):
    assert images == 3  # loss curve, sample grid, the curves of three attention ops
    assert "resumed from" in text and "now at step 30" in text
    assert "neighborhood {'kernel_size': 13}" in text


def check_bring_your_own_model(text, images):
    assert number(r"lla dense vs Flax:\s+(\S+)", text) < 1e-5
    assert number(r"lla causal vs Flax causal:\s+(\S+)", text) < 1e-5
    assert number(r"is_causal=True vs NNX causal: (\S+)", text) < 1e-5
    assert number(r"GQA vs repeated kv heads: (\S+)", text) < 1e-6
    assert "arbitrary `mask` cannot be honoured" in text and "attention dropout" in text
    assert "NNX lla layer on a 16 x 16 grid: (2, 16, 16, 64)" in text


def check_neighborhood_windows(text, images):
    assert images == 2 and "keys in all: 27" in text


NOTEBOOKS = {"attention_ops.ipynb": check_attention_ops,
             "train_pixel_dit.ipynb": check_train_pixel_dit,
             "bring_your_own_model.ipynb": check_bring_your_own_model,
             "neighborhood_windows.ipynb": check_neighborhood_windows}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_and_shows_its_results(name):
    NOTEBOOKS[name](*execute(name))
