"""``pruning.teach.Teacher`` on every family beyond LLaVA-1.5 (issue 27), each a tiny random-init checkpoint: the
requests take the prepared image's own grid and token count; probing and hand-picking run on Qwen2.5-VL's merged
grid and are refused in words on the packed strips (LLaVA-OneVision, LLaVA-NeXT, InternVL); the film, the agreement
and random over seeds run everywhere; the band and the lessons are refused."""

import numpy as np
import pytest

from pruning.compare import Scope
from pruning.toy_families import build_family

FAMILIES = ("qwen2.5-vl", "llava-onevision", "llava-next", "internvl")
NAMES = {"qwen2.5-vl": "Qwen2.5-VL", "llava-onevision": "LLaVA-OneVision", "llava-next": "LLaVA-NeXT",
         "internvl": "InternVL"}
Q = "What is in the picture?"
IMAGE = np.random.RandomState(11).randint(0, 255, (64, 80, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("teach-families-lib")
    return {f: Scope(str(build_family(root / f, f, seed=1)), speed_report=None).teach for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_request_uses_the_images_own_grid_or_refuses_in_words(teachers, family):
    t = teachers[family]
    seen = t.view(IMAGE, Q)
    n, (rows, cols) = seen["visual_tokens"], seen["grid"]
    assert rows * cols == n and seen["drawn"] is (family == "qwen2.5-vl")
    if family == "qwen2.5-vl":
        assert [rows, cols] == [8, 10]
        p = t.probe(IMAGE, Q, rows - 1, cols - 1, ["random"], keep_ratio=0.5, max_new_tokens=1)
        assert p["patch"] == n - 1 and p["vit_attention"] is None and p["vit_note"]
        assert all(len(layer) == n for layer in p["llm_attention"]["none"])
    else:
        assert rows == 1  # a packed strip
        strip = rf"needs a patch grid over the picture; {NAMES[family]} packs .* one strip of {n} tokens"
        with pytest.raises(ValueError, match="probing a patch " + strip):
            t.probe(IMAGE, Q, 0, 0, [], max_new_tokens=1)
        with pytest.raises(ValueError, match="choosing the patches by hand " + strip):
            t.handpick(IMAGE, Q, "0, 1", max_new_tokens=1, repeats=1)
    film = t.budget_film(IMAGE, Q, ["random"], None, max_new_tokens=1)
    assert film["budgets"][0] == n and film["n_patches"] == n and film["grid"] == [rows, cols]
    assert [f["visual_tokens_kept"] for f in film["frames"]["random"]] == film["budgets"]
    with pytest.raises(ValueError, match=rf"budget {n + 1} is outside 1\.\.{n} \(this image's {n} visual tokens\)"):
        t.budget_film(IMAGE, Q, ["random"], f"{n + 1}", max_new_tokens=1)
    a = t.agreement(IMAGE, Q, ["random", "vtc-cls"], keep_ratio=0.25, max_new_tokens=1)
    k = round(0.25 * n)
    assert len(a["counts"]) == n and all(len(s) == k for s in a["sets"].values()) and a["drawn"] is seen["drawn"]
    s = t.random_seeds(IMAGE, Q, None, 2, keep_ratio=0.25, max_new_tokens=1)
    assert s["keep"] == k and all(len(kept) == k for kept in s["kept"])
    assert len(t.kept_set(IMAGE, Q, "random", keep=n + 50, max_new_tokens=1)["kept_final"]) == n  # clamped to N
    with pytest.raises(ValueError, match=rf"random's band is a sweep .* not run on {NAMES[family]}"):
        t.random_band(["vtc-cls"], "4", 5, 2)
    with pytest.raises(ValueError, match=rf"lessons are prepared on the embedded toy model.*{NAMES[family]}"):
        t.lesson("cls-knows", max_new_tokens=1)
