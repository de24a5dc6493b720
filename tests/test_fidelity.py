"""Fidelity to the papers' code (issue 14): PruMerge+'s merge, its uniform samples, EViT's fused token, ToMe's
keys, the stage-dependent positions of VTC-CLS, VTW's K numbering, and ``Selection.groups`` of every merging
strategy."""

import json
import math

import pytest
import torch

from pruning.bench import calibrate_vtw
from pruning.cli import main
from pruning.strategies import VisionContext, get_strategy, top_indices
from pruning.strategies.prumerge_plus import concat_head_attention, uniform_samples

MERGING = ["pooling", "evit", "kmeans", "tome", "prumerge+"]


def vctx(features, att=None, rows=1, cols=None, feature_layer=1, keys=None, reader_keys=None, seed=0):
    n = features.shape[0]
    return VisionContext(patch_features=features, cls_attention=att, cls_feature=None, rows=rows,
                         cols=cols if cols is not None else n // rows, generator=torch.Generator().manual_seed(seed),
                         feature_layer=feature_layer, patch_keys=keys, reader_keys=reader_keys)


def unit(degrees):
    rad = torch.tensor(degrees, dtype=torch.float32) * math.pi / 180
    return torch.stack([rad.cos(), rad.sin()], dim=-1)


# A 1 x 6 grid. Layer 2 (the one after feature layer 1) holds the known [CLS] attention, one head: [CLS] 0.38,
# patches .05 .30 .05 .10 .05 .07. IQR: Q1 .05, Q3 .0925, bound .15625 -> the one outlier is patch 1; the one
# uniform sample of a 1 x 6 grid is patch 3, so the kept tokens are 1 and 3. Reader-layer keys by angle:
# 0: 0, 1: 10, 2: 20, 3: 90, 4: 100, 5: 60 degrees; the nearest three of patch 1 are 0, 2 (10 degrees) and
# 5 (50); of patch 3: 4 (10), 5 (30), 2 (70).
X = torch.tensor([[1., 0], [0, 1], [2, 2], [3, -1], [-1, 4], [5, 5]])
A = torch.tensor([.05, .30, .05, .10, .05, .07])
ATT = torch.zeros(3, 1, 6)
ATT[1, 0] = torch.tensor([.30, .05, .05, .05, .05, .05])  # the feature layer: would rank patch 0 first
ATT[2, 0] = A
READER_KEYS = unit([0, 10, 20, 90, 100, 60])
FEATURE_KEYS = unit([0, 90, 0, 90, 0, 90])  # would give other neighbours


def test_concat_head_attention_is_one_head_over_concatenated_qk():
    g = torch.Generator().manual_seed(0)
    heads, hd, t = 4, 8, 10
    q, k = torch.randn(heads * hd, generator=g), torch.randn(t, heads * hd, generator=g)
    per_head = (torch.einsum("hd,thd->ht", q.view(heads, hd), k.view(t, heads, hd)) * hd ** -0.5).softmax(-1)
    direct = ((k @ q) / math.sqrt(heads * hd)).softmax(-1)  # the authors' code: scale C ** -0.5
    torch.testing.assert_close(concat_head_attention(per_head[:, 1:]), direct[1:], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(concat_head_attention(ATT[2]), A)  # one head: the row itself


def test_prumerge_plus_merge_hand_computed():
    c = vctx(X, ATT, keys=FEATURE_KEYS, reader_keys=READER_KEYS)
    s = get_strategy("prumerge+", keep=2, neighbours=3, extra=False).select_before_llm(c)
    assert s.indices.tolist() == [1, 3]
    # y_i = x_i + sum_j a_j x_j, own weight 1, raw attention of the neighbours (not normalised)
    y1 = X[1] + .05 * X[0] + .05 * X[2] + .07 * X[5]  # [0.50, 1.45]
    y3 = X[3] + .05 * X[4] + .07 * X[5] + .05 * X[2]  # [3.40, -0.35]
    torch.testing.assert_close(s.features, torch.stack([y1, y3]))
    torch.testing.assert_close(s.features, torch.tensor([[0.50, 1.45], [3.40, -0.35]]))
    # patch 2 joined both: same weight .05 in each, so it goes to the more similar kept token, 1 (10 vs 70
    # degrees); patch 5 joined both too and goes to 3 (30 vs 50 degrees)
    assert s.groups.tolist() == [0, 0, 0, 1, 1, 1]
    # neighbours are searched among all other tokens: with four, patch 3 is among patch 1's and 1 among 3's
    s4 = get_strategy("prumerge+", keep=2, neighbours=4, extra=False).select_before_llm(c)
    torch.testing.assert_close(s4.features, torch.stack([y1 + .10 * X[3], y3 + .30 * X[1]]))


def test_prumerge_plus_extra_token_and_layer_choice():
    c = vctx(X, ATT, keys=FEATURE_KEYS, reader_keys=READER_KEYS)
    s = get_strategy("prumerge+", keep=3, neighbours=3).select_before_llm(c)  # extra=True: 2 kept + 1
    # the extra token sums the pruned tokens 0, 2, 4, 5 by raw attention and stands at the best of them, 5
    assert s.indices.tolist() == [1, 3, 5]
    extra = .05 * X[0] + .05 * X[2] + .05 * X[4] + .07 * X[5]  # [0.45, 0.65]
    torch.testing.assert_close(s.features[2], extra)
    torch.testing.assert_close(s.features[:2], torch.tensor([[0.50, 1.45], [3.40, -0.35]]))
    assert s.groups.tolist() == [0, 0, 0, 1, 1, 2]  # 5 is the extra token's anchor; 0, 2, 4 went to kept ones
    # qk_layer="feature": layer 1's attention (patch 0 the outlier) and keys
    f = get_strategy("prumerge+", keep=2, neighbours=3, extra=False, qk_layer="feature").select_before_llm(c)
    assert 0 in f.indices.tolist() and 1 not in f.indices.tolist()
    with pytest.raises(ValueError, match="qk_layer"):
        get_strategy("prumerge+", qk_layer="last")
    with pytest.raises(ValueError, match="attention"):
        get_strategy("prumerge+", attention="max")


def covering_radius(samples: torch.Tensor, rows: int, cols: int) -> int:
    """The largest Chebyshev distance from a patch to its nearest sample."""
    r, c = samples // cols, samples % cols
    grid_r, grid_c = torch.arange(rows * cols) // cols, torch.arange(rows * cols) % cols
    d = torch.maximum((grid_r[:, None] - r[None]).abs(), (grid_c[:, None] - c[None]).abs())
    return int(d.min(1).values.max())


@pytest.mark.parametrize("rows,count", [(12, 48), (12, 64), (24, 192)])
def test_prumerge_plus_uniform_samples_are_spread(rows, count):
    s = uniform_samples(rows, rows, count)
    assert len(s) == count and len(set(s.tolist())) == count and s.tolist() == sorted(s.tolist())
    assert covering_radius(s, rows, rows) == 1  # every patch touches a sample (stride 1 would be radius 0)
    per_row = torch.bincount(s // rows, minlength=rows)
    per_col = torch.bincount(s % rows, minlength=rows)
    assert (per_row[:-1] + per_row[1:]).min() > 0 and (per_col[:-1] + per_col[1:]).min() > 0  # no empty bands
    # in the strategy, with a score that has no IQR outlier but favours the top-left corner, the kept set is
    # these samples, not the top-k (what a stride of 1 gave above 36 samples)
    r, c = torch.arange(rows * rows) // rows, torch.arange(rows * rows) % rows
    score = 1 - (r + c).float() / (4 * rows)
    att = torch.zeros(3, 1, rows * rows)
    att[2, 0] = score / score.sum() * 0.5
    ctx = vctx(torch.randn(rows * rows, 3), att, rows=rows, cols=rows)
    kept = get_strategy("prumerge+", keep=count, extra=False).select_before_llm(ctx).indices
    assert kept.tolist() == s.tolist() and kept.tolist() != top_indices(att[2, 0], count).tolist()
    with_extra = get_strategy("prumerge+", keep=count).select_before_llm(ctx)
    assert len(with_extra.indices) == count and covering_radius(with_extra.indices, rows, rows) <= 1


def test_prumerge_plus_outliers_and_samples_fill_the_budget_exactly():
    g = torch.Generator().manual_seed(4)
    att = torch.rand(3, 2, 144, generator=g) * 0.002
    att[2, :, [0, 1, 13, 14, 26, 77, 78]] = 0.05  # outliers, some where lattice points fall
    ctx = vctx(torch.randn(144, 3, generator=g), att, rows=12, cols=12, keys=torch.randn(144, 8, generator=g))
    for keep in (1, 2, 5, 7, 8, 16, 32, 48, 100, 143):
        s = get_strategy("prumerge+", keep=keep).select_before_llm(ctx)
        assert len(s.indices) == keep and len(set(s.indices.tolist())) == keep
    assert get_strategy("prumerge+", keep=144).select_before_llm(ctx).features is None


def test_evit_fused_token_uses_raw_attention():
    att = torch.zeros(3, 1, 4)
    att[2, 0] = torch.tensor([.4, .1, .3, .2])
    feats = torch.tensor([[1., 0], [0, 1], [2, 2], [4, 0]])
    s = get_strategy("evit", keep=2).select_before_llm(vctx(feats, att, rows=2, cols=2, feature_layer=2))
    # EViT eq. 2: x_fused = sum_j a_j x_j over the inattentive 1, 2, 3, weights .1 .3 .2 as they are
    assert s.indices.tolist() == [0, 2]
    torch.testing.assert_close(s.features[1], 0.1 * feats[1] + 0.3 * feats[2] + 0.2 * feats[3])
    torch.testing.assert_close(s.features[1], torch.tensor([1.4, 0.7]))
    torch.testing.assert_close(s.features[0], feats[0])
    assert s.groups.tolist() == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="fuse"):
        get_strategy("evit", fuse="max")


def test_tome_matches_keys_averaged_over_heads():
    # 2 heads of 2 dims. Averaged over heads, key 1 equals key 0 (cosine 1); concatenated they are orthogonal
    # and key 3 is nearer (cosine 0.99). A = {0, 2}, B = {1, 3}; one merge: token 0 (its best match is the
    # best of A's).
    keys = torch.tensor([[1., 0, 0, 1], [0, 1, 1, 0], [-1, 0, 0, -1], [1, .2, 0, 1]])
    feats = torch.tensor([[1., 0], [0, 1], [2, 2], [4, 0]])
    att = torch.zeros(3, 2, 4)
    c = vctx(feats, att, rows=2, cols=2, feature_layer=2, keys=keys)
    mean = get_strategy("tome", keep=3).select_before_llm(c)
    torch.testing.assert_close(get_strategy("tome").metric(c), keys.view(4, 2, 2).mean(1))
    assert mean.indices.tolist() == [1, 2, 3] and mean.groups.tolist() == [0, 0, 1, 2]
    torch.testing.assert_close(mean.features[0], (feats[0] + feats[1]) / 2)
    concat = get_strategy("tome", keep=3, head_keys="concat").select_before_llm(c)
    assert concat.groups.tolist() == [2, 0, 1, 2]
    torch.testing.assert_close(concat.features[2], (feats[0] + feats[3]) / 2)


def test_pooling_groups_are_windows():
    feats = torch.arange(16.).reshape(16, 1)
    s = get_strategy("pooling", keep=4).select_before_llm(vctx(feats, rows=4, cols=4))
    assert s.groups.tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3]


def groups_consistent(sel, n):
    g = sel.groups
    u = len(sel.indices)
    assert g is not None and g.shape == (n,) and g.dtype == torch.long
    assert int(g.min()) >= -1 and int(g.max()) <= u - 1
    assert g[sel.indices].tolist() == list(range(u))  # every kept patch points at its own position
    return g


@pytest.mark.parametrize("keep", [0, 1, 5, 10, 36])
@pytest.mark.parametrize("name,params", [(m, {}) for m in MERGING] + [("prumerge+", {"extra": False}),
                                                                     ("evit", {"fuse": "mean"}),
                                                                     ("tome", {"head_keys": "concat"})])
def test_groups_consistent_for_every_merging_strategy(name, params, keep):
    g = torch.Generator().manual_seed(2)
    att = torch.rand(4, 2, 36, generator=g)
    att = att / att.sum(-1, keepdim=True) * 0.7
    c = vctx(torch.randn(36, 6, generator=g), att, rows=6, cols=6, feature_layer=2,
             keys=torch.randn(36, 8, generator=g), reader_keys=torch.randn(36, 8, generator=g))
    sel = get_strategy(name, keep=keep, **params).select_before_llm(c)
    groups = groups_consistent(sel, 36)
    if 0 < len(sel.indices) < 36 and name in ("kmeans", "tome", "pooling"):
        assert (groups >= 0).all()  # these merge every patch somewhere
    if name == "evit" and 1 < keep < 36:  # the fused token took every inattentive patch
        assert (groups >= 0).all() and int(groups.bincount().max()) == 36 - (keep - 1)


@pytest.mark.parametrize("name", MERGING)
def test_merge_groups_through_the_engine(name):
    from pruning.engine import Engine
    from pruning.model import DEFAULT_MODEL_DIR, load_model
    from pruning.shapes import world

    from .test_strategies import _embedded

    engine = _embedded(Engine, load_model, DEFAULT_MODEL_DIR)
    scene = world.make_scene(world.HELD_OUT_SEED + 5)
    r = engine.run(scene.image, "What colour is the circle?", get_strategy(name, keep=36), max_new_tokens=2,
                   warmup=0)
    groups = torch.tensor(r.merge_groups)
    assert groups.shape == (144,) and int(groups.min()) >= -1 and int(groups.max()) < len(r.kept)
    assert groups[torch.tensor(r.kept)].tolist() == list(range(len(r.kept)))


def test_vtc_cls_positions_default_by_stage():
    assert get_strategy("vtc-cls").positions == "rearrange"  # before the LLM: the authors' code
    assert get_strategy("vtc-cls", stage="llm").positions == "keep"  # Table 6 follows FastV
    assert get_strategy("vtc-cls", stage="llm", positions="rearrange").positions == "rearrange"
    assert get_strategy("vtc-cls", positions="keep").positions == "keep"


def test_vtw_k_is_the_papers_plus_one():
    s = get_strategy("vtw")
    assert s.llm_layer(32) == 15 and s.paper_k(s.llm_layer(32)) == 16  # "the 16th layer" of 32
    assert s.llm_layer(8) == 3 and s.paper_k(3) == 4


def test_calibrate_reports_both_numberings(engines, images, model_dirs, capsys):
    from pruning.bench import Sample

    engine = engines("llava15")
    out = calibrate_vtw(engine, [Sample(images[0], "what?", "x")], eta=1e9, progress=False)
    assert out["min_layer"] == 4 and out["min_k_paper"] == 5  # the paper's K >= 5
    assert out["k"] == 4 and out["k_paper"] == 5
    assert {int(k) - 1: v for k, v in out["kl_per_k_paper"].items()} == {int(k): v for k, v in
                                                                          out["kl_per_layer"].items()}
    assert main(["calibrate", "--model", str(model_dirs["tiny"]), "--samples", "1", "--min-k", "2",
                 "--eta", "100", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["k"] == 1 and res["k_paper"] == 2 and res["min_layer"] == 1
    assert main(["calibrate", "--model", str(model_dirs["tiny"]), "--samples", "1", "--eta", "100",
                 "--min-layer", "1"]) == 0
    text = capsys.readouterr().out
    assert "layer=  1  K=  2" in text and "chosen: layer 1 (the paper's K = 2)" in text


def test_tome_survivors_depend_on_the_image_not_only_on_position():
    """Issue 15's review: merging all of A in one round left exactly the odd positions at any budget <= N/2."""
    kept = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        att = torch.rand(6, 2, 144, generator=g)
        c = vctx(torch.randn(144, 8, generator=g), att, rows=12, cols=12, feature_layer=4,
                 keys=torch.randn(144, 8, generator=g))
        sel = get_strategy("tome", keep=36).select_before_llm(c)
        assert len(sel.indices) == 36
        groups_consistent(sel, 144)
        kept.append(sel.indices.tolist())
    assert kept[0] != kept[1]
    assert kept[0] != list(range(3, 144, 4)) and any(i % 2 == 0 for i in kept[0])  # not the fixed odd lattice
