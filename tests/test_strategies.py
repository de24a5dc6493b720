"""Each paper strategy: its rule on small hand-computed tensors, then end to end through the engine."""

import math

import pytest
import torch

from pruning.strategies import LLMContext, VisionContext, available, get_strategy
from pruning.strategies.kmeans import kmeans
from pruning.strategies.prumerge_plus import iqr_outliers
from pruning.strategies.tome import bipartite_merge

from .conftest import QUESTIONS


def ctx(features=None, cls_attention=None, cls_feature=None, rows=2, cols=3, feature_layer=2, keys=None, seed=0):
    n = rows * cols
    features = torch.randn(n, 4, generator=torch.Generator().manual_seed(1)) if features is None else features
    return VisionContext(patch_features=features, cls_attention=cls_attention, cls_feature=cls_feature, rows=rows,
                         cols=cols, generator=torch.Generator().manual_seed(seed), feature_layer=feature_layer,
                         patch_keys=keys)


# (L=4 layers, H=2 heads, N=6 patches); feature layer 2 is the "penultimate"
ATT = torch.tensor([
    [[.1, .1, .1, .1, .1, .5], [.1, .1, .1, .1, .1, .5]],
    [[.0, .6, .1, .1, .1, .1], [.0, .4, .3, .1, .1, .1]],
    [[.5, .1, .0, .2, .1, .1], [.3, .1, .2, .2, .1, .1]],
    [[.9, .0, .0, .0, .0, .1], [.9, .0, .0, .0, .0, .1]],
])


def test_vtc_cls_single_layer_and_k_ensemble():
    c = ctx(cls_attention=ATT)
    # K=1: layer 2 mean over heads = [.4, .1, .1, .2, .1, .1] -> top-2 = {0, 3}
    assert get_strategy("vtc-cls", keep=2, k_layers=1).select_before_llm(c).indices.tolist() == [0, 3]
    # K=3 avg over layers 0..2: patch 0 (.0+.0+.4)/3, 1 (.1+.5+.1)/3, 5 (.5+.1+.1)/3 -> top-2 = {1, 5}
    torch.testing.assert_close(c.cls_scores(3, "avg"), ATT[0:3].mean(1).mean(0))
    assert get_strategy("vtc-cls", keep=2, k_layers=3).select_before_llm(c).indices.tolist() == [1, 5]
    assert get_strategy("vtc-cls", keep=1, k_layers=3, ensemble="max").select_before_llm(c).indices.tolist() == [1]
    torch.testing.assert_close(c.cls_scores(3, "min"), ATT[0:3].mean(1).min(0).values)
    with pytest.raises(ValueError, match="k_layers"):
        c.cls_scores(4)  # only layers 0..2 end at the feature layer
    with pytest.raises(ValueError, match="ensemble"):
        get_strategy("vtc-cls", ensemble="median")


def test_vtc_cls_in_llm_uses_same_scores():
    c = ctx(cls_attention=ATT)
    llm = LLMContext(layer=2, hidden_states=torch.zeros(10, 4), attention_row=None,
                     image_rows=torch.arange(2, 8), patch_indices=torch.arange(6), vision=c)
    assert get_strategy("vtc-cls", keep=2, k_layers=1, stage="llm").select_in_llm(llm).tolist() == [0, 3]
    assert get_strategy("vtc-cls").positions == "rearrange"


def test_fastv_ranks_by_last_token_attention():
    row = torch.tensor([[.05, .05, .3, .0, .2, .1, .1, .2], [.05, .05, .1, .2, .2, .1, .1, .2]])  # (H=2, S=8)
    llm = LLMContext(layer=2, hidden_states=torch.zeros(8, 4), attention_row=row, image_rows=torch.arange(2, 7),
                     patch_indices=torch.arange(5), vision=ctx(rows=1, cols=5))
    # image rows 2..6 mean attention [.2, .1, .2, .1, .1] -> keep 2 -> image rows 0 and 2
    assert get_strategy("fastv", keep=2).select_in_llm(llm).tolist() == [0, 2]
    # default R = 50% dropped: keep round(5 * 0.5) = round(2.5) = 2, as FastV's code (Python rounds halves to even)
    assert len(get_strategy("fastv").select_in_llm(llm)) == 2
    s = get_strategy("fastv")
    assert s.stage == "llm" and s.layer == 2 and s.positions == "keep" and s.needs_attention_row


def test_vtw_withdraws_everything_at_half_depth():
    s = get_strategy("vtw")
    # half the depth in the paper's 1-based K (K = 16 of 32, K = 4 of 8) is the engine's 0-based layer K - 1
    assert s.llm_layer(32) == 15 and s.llm_layer(8) == 3 and get_strategy("vtw", layer=6).llm_layer(8) == 6
    llm = LLMContext(layer=4, hidden_states=torch.zeros(8, 4), attention_row=None, image_rows=torch.arange(2, 7),
                     patch_indices=torch.arange(5), vision=ctx(rows=1, cols=5))
    assert s.select_in_llm(llm).numel() == 0
    with pytest.raises(ValueError, match="keep must be 0"):
        get_strategy("vtw", keep=3)


def test_topk_similarity_to_cls():
    feats = torch.tensor([[1., 0], [0, 1], [1, 1], [-1, 0], [2, 0.1], [0, -1]])
    s = get_strategy("topk-sim", keep=2).select_before_llm(ctx(features=feats, cls_feature=torch.tensor([1., 0])))
    assert s.indices.tolist() == [0, 4]


def test_pooling_averages_windows():
    feats = torch.arange(16.).reshape(16, 1).repeat(1, 2)  # 4x4 grid, feature = patch index
    s = get_strategy("pooling", keep=4).select_before_llm(ctx(features=feats, rows=4, cols=4))
    assert s.features[:, 0].tolist() == [2.5, 4.5, 10.5, 12.5]  # means of the four 2x2 windows
    assert s.indices.tolist() == [0, 2, 8, 10]


def test_evit_fuses_the_rest_weighted_by_attention():
    att = torch.zeros(3, 1, 4)
    att[2, 0] = torch.tensor([.4, .1, .3, .2])
    feats = torch.tensor([[1., 0], [0, 1], [2, 2], [4, 0]])
    s = get_strategy("evit", keep=2, fuse="mean").select_before_llm(ctx(features=feats, cls_attention=att, rows=2,
                                                                        cols=2))
    # keep patch 0; fuse 1,2,3 with weights .1,.3,.2 (/.6) at the position of patch 2 (highest of the rest);
    # fuse="mean" renormalises (EViT's raw weights, the default: tests/test_fidelity.py)
    assert s.indices.tolist() == [0, 2]
    torch.testing.assert_close(s.features[1], (0.1 * feats[1] + 0.3 * feats[2] + 0.2 * feats[3]) / 0.6)


def test_kmeans_finds_separated_clusters_deterministically():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10, 2, generator=g) * 0.01 + torch.tensor(c) for c in ([0., 0], [5, 5], [0, 5])])
    centres = kmeans(x, 3, torch.Generator().manual_seed(3))
    expected = torch.tensor([[0., 0], [5, 5], [0, 5]])
    assert torch.cdist(expected, centres).min(1).values.max() < 0.05
    s1 = get_strategy("kmeans", keep=3, seed=3).select_before_llm(ctx(features=x, rows=5, cols=6, seed=3))
    s2 = get_strategy("kmeans", keep=3, seed=3).select_before_llm(ctx(features=x, rows=5, cols=6, seed=3))
    assert torch.equal(s1.indices, s2.indices) and len(s1.indices) == 3


def test_tome_bipartite_matching_size_weighted():
    x = torch.tensor([[1., 0], [1., 0.1], [0, 1], [5, 5]])  # A = {0, 2}, B = {1, 3}
    out, keys, size, index = bipartite_merge(x, x, torch.ones(4), torch.arange(4), r=1)
    # token 0 matches token 1 best (cosine ~1) and merges into it; ToMe's order: unmerged A (2), then B (1, 3)
    assert index.tolist() == [2, 1, 3] and size.tolist() == [1, 2, 1]
    torch.testing.assert_close(out[1], (x[0] + x[1]) / 2)
    s = get_strategy("tome", keep=2).select_before_llm(ctx(features=x, rows=2, cols=2))
    assert len(s.indices) == 2


def test_prumerge_plus_iqr_and_budget():
    scores = torch.tensor([1., 1, 1, 1, 1, 1, 1, 1, 1, 30])
    assert iqr_outliers(scores).tolist() == [9]
    att = torch.zeros(3, 1, 16)
    att[2, 0] = torch.linspace(0, 1, 16) ** 8
    s = get_strategy("prumerge+", keep=5).select_before_llm(ctx(features=torch.randn(16, 3), cls_attention=att,
                                                                  rows=4, cols=4))
    assert len(s.indices) == 5 and 15 in s.indices.tolist() and s.features.shape == (5, 3)


SELECTION = ["vtc-cls", "random", "topk-sim", "evit", "kmeans", "tome", "prumerge+", "pooling"]


def test_every_strategy_is_registered():
    assert set(SELECTION) | {"none", "fastv", "vtw"} <= set(available())


@pytest.mark.parametrize("budget", [192, 128, 64])
@pytest.mark.parametrize("name", SELECTION + ["fastv", "ivtp"])
def test_end_to_end_on_576_token_model(engines, images, name, budget):
    engine = engines("llava15")
    r = engine.run(images[0], QUESTIONS[0], get_strategy(name, keep=budget), max_new_tokens=3, warmup=0)
    kept = r.kept_final
    assert len(set(kept)) == len(kept) and all(0 <= i < 576 for i in kept) and kept == sorted(kept)
    if name == "pooling":
        assert abs(len(kept) - budget) <= 2 * math.isqrt(budget) + 1
    else:
        assert len(kept) == budget
    if name == "fastv":
        assert r.image_tokens_per_layer[:2] == [576, 576] and r.image_tokens_per_layer[2:] == [budget] * 4


def test_vtw_end_to_end(engines, images):
    engine = engines("llava15")
    r = engine.run(images[0], QUESTIONS[0], get_strategy("vtw"), max_new_tokens=3, warmup=0)
    assert r.image_tokens_per_layer == [576] * 2 + [0] * 4  # 6 layers: the paper's K = 3, 0-based layer 2


@pytest.mark.parametrize("name", SELECTION + ["fastv", "ivtp"])
def test_full_budget_reproduces_unpruned_answer(engines, images, name):
    engine = engines("llava15")
    ref = engine.run(images[1], QUESTIONS[1], get_strategy("none"), max_new_tokens=6, warmup=0)
    params = {"keep": 576}
    if name == "vtc-cls":
        params["positions"] = "keep"
    r = engine.run(images[1], QUESTIONS[1], get_strategy(name, **params), max_new_tokens=6, warmup=0)
    assert r.generated_tokens == ref.generated_tokens


@pytest.mark.parametrize("name", SELECTION + ["fastv", "ivtp", "vtw"])
def test_every_strategy_on_the_embedded_model(name):
    from pruning.model import DEFAULT_MODEL_DIR, load_model
    from pruning.engine import Engine
    from pruning.shapes import world

    engine = _embedded(Engine, load_model, DEFAULT_MODEL_DIR)
    scene = world.make_scene(world.HELD_OUT_SEED + 3)
    params = {} if name == "vtw" else {"keep": 36}
    r = engine.run(scene.image, "How many objects are there?", get_strategy(name, **params), max_new_tokens=3,
                   warmup=0)
    assert r.answer and r.visual_tokens == 144 and r.notes == []
    assert r.image_tokens_per_layer[-1] == (0 if name == "vtw" else 36)  # pooling: 6 x 6 = 36 exactly


_EMBEDDED = {}


def _embedded(engine_cls, load, path):
    if "engine" not in _EMBEDDED:
        _EMBEDDED["engine"] = engine_cls(load(str(path), device="cpu"))
    return _EMBEDDED["engine"]
