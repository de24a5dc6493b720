"""Every registered strategy on every family with an engine adapter: it runs, or it refuses clearly, as the table
"Strategy x model family" in docs/strategies.md says (issue 27)."""

import re
from pathlib import Path

import pytest

from pruning.strategies import available, get_strategy

from .conftest import QUESTIONS

DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"
COLUMNS = {"llava": "LLaVA-1.5", "qwen2_5_vl": "Qwen2.5-VL", "llava_onevision": "LLaVA-OneVision",
           "llava_next": "LLaVA-NeXT", "internvl": "InternVL"}
# strategies whose budget is not ``keep`` by default (they have an in-LLM rule of their own)
OWN_BUDGET = {"none", "fastv", "vtw", "dart", "manual"}


def doc_matrix() -> dict:
    """{strategy: {column title: cell}} from the table under "## Strategy x model family"."""
    text = DOC.read_text()
    block = text[text.index("## Strategy x model family"):]
    block = block[:block.index("\n## ", 1)]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        out[cells[0].strip("`")] = dict(zip(header[1:], cells[1:]))
    return out


def test_the_table_lists_every_strategy():
    assert set(doc_matrix()) == set(available())


@pytest.fixture(scope="module")
def engines(engines, family_engines):
    """One engine per column: LLaVA-1.5's tiny checkpoint and the families' (conftest's, shared by the session)."""
    return {"llava": engines("tiny"), "qwen2_5_vl": family_engines("qwen2.5-vl"),
            "llava_onevision": family_engines("llava-onevision"), "llava_next": family_engines("llava-next"),
            "internvl": family_engines("internvl")}


@pytest.mark.parametrize("family", list(COLUMNS))
def test_every_strategy_runs_or_refuses_as_documented(engines, images, family):
    engine = engines[family]
    matrix = doc_matrix()
    ran, refused = [], []
    for name in available():
        cell = matrix[name][COLUMNS[family]]
        prepared = engine.prepare(images[0], QUESTIONS[0])
        keep = max(prepared.n_image // 4, 2)
        strategy = get_strategy(name) if name in OWN_BUDGET else get_strategy(name, keep=keep)
        if cell.startswith("runs"):
            result = engine.run(images[0], QUESTIONS[0], strategy, max_new_tokens=2, warmup=0)
            assert result.visual_tokens == prepared.n_image
            assert 0 < result.visual_tokens_kept <= prepared.n_image
            if name not in OWN_BUDGET and name != "pooling":  # pooling keeps the nearest grid it can pool to
                assert result.image_tokens_per_layer[-1] == keep, name  # the budget, reached by the last layer
            substitute = any("a substitute" in note for note in result.notes or [])
            assert substitute == ("substitute" in cell), (name, cell, result.notes)  # named exactly where used
            ran.append(name)
        else:
            assert cell.startswith("refuses"), (name, cell)
            with pytest.raises(ValueError, match=re.escape("[CLS]")):
                engine.run(images[0], QUESTIONS[0], strategy, max_new_tokens=2, warmup=0)
            refused.append(name)
    assert ran and "none" in ran
    if family == "llava":
        assert not refused
