"""VisionZip and VisPruner (issue 25) on hand-computed tensors, then through the engine, the CLI, the app and the
cost model; ToMe, FastV and PruMerge+ aligned with their authors' code."""

import json
import math

import pytest
import torch

from pruning.strategies import LLMContext, VisionContext, get_strategy
from pruning.strategies.tome import bipartite_merge
from pruning.strategies.vispruner import remove_duplicates
from pruning.strategies.visionzip import contextual_count

from .conftest import QUESTIONS
from .test_strategies_2025 import _embedded_engine

NEW = ["visionzip", "vispruner"]  # through lmms-eval: tests/test_strategies_2025.py covers these too


def vctx(features, att, rows, cols, keys=None, cls_feature=None, feature_layer=0):
    return VisionContext(patch_features=features, cls_attention=att, cls_feature=cls_feature, rows=rows, cols=cols,
                         generator=torch.Generator().manual_seed(0), feature_layer=feature_layer, patch_keys=keys)


def unit(*degrees):
    """Unit vectors at these angles (degrees): cosine similarity = cos(difference of angles)."""
    r = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([r.cos(), r.sin()], 1).float()


# -------------------------------------------------------------------------------------------------------- VisionZip
# 8 patches on a 2 x 4 grid, 2 heads. [CLS] attention summed over heads: [.10 .10 .50 .10 .10 .55 .15 .17]
# -> by rank: 5, 2, 7, 6, then the rest.
ZIP_ATT = torch.tensor([[[.05, .05, .30, .05, .05, .20, .10, .05],
                         [.05, .05, .20, .05, .05, .35, .05, .12]]])  # (L=1, H=2, N=8)
# Head-averaged keys (2-D): patches 1 and 3 point near patch 0 (0 deg), 6 and 7 near patch 4 (90 deg).
ZIP_KEY = torch.tensor([[1, 0], [1, .1], [.5, .5], [.9, .2], [0, 1], [-1, 0], [.1, 1], [.3, 1]])
ZIP_OFFSET = torch.tensor([[.3, -.2]]).expand(8, 2)  # head 1 = key + offset, head 2 = key - offset: the mean is key
ZIP_KEYS = torch.cat([ZIP_KEY + ZIP_OFFSET, ZIP_KEY - ZIP_OFFSET], 1)  # (N, 2 heads x 2 dims)


def test_visionzip_by_hand_with_cls():
    # keep 5 = 3 dominant ([CLS] + the top-2 patches 5 and 2) + 2 contextual. The other patches, row-major:
    # [0, 1, 3, 4, 6, 7] (M = 6); targets every M // 2 = 3rd: rows 0 and 3 = patches 0 and 4. By key cosine,
    # 1 and 3 go to 0, and 6 and 7 to 4. Contextual token = target state + mean of its group (not renormalised):
    # e0 + (e1 + e3) / 2 at patch 0, e4 + (e6 + e7) / 2 at patch 4. The [CLS] token stands at the first patch
    # that is neither dominant nor a target: patch 1.
    feats, cls = torch.eye(8), torch.full((8,), 9.)
    s = get_strategy("visionzip", keep=5, contextual=2).select_before_llm(
        vctx(feats, ZIP_ATT, 2, 4, keys=ZIP_KEYS, cls_feature=cls))
    e = torch.eye(8)
    assert s.indices.tolist() == [0, 1, 2, 4, 5]
    torch.testing.assert_close(s.features, torch.stack([e[0] + (e[1] + e[3]) / 2, cls, e[2],
                                                        e[4] + (e[6] + e[7]) / 2, e[5]]))
    assert s.groups.tolist() == [0, 1, 2, 0, 3, 4, 3, 3]  # patch 1's own state is in token 0; groups shows [CLS]


def test_visionzip_by_hand_without_cls():
    # cls_token=False: keep 5 = 3 dominant patches (5, 2, 7) + 2 contextual. Rest: [0, 1, 3, 4, 6] (M = 5),
    # targets every 5 // 2 = 2nd: rows 0 and 2 = patches 0 and 3 (keys at 0 deg and 12.5 deg). Patch 1 (5.7 deg)
    # is nearer 0 (cos .995 vs .993), patch 4 (90 deg) nearer 3 (.217 vs 0), patch 6 (84 deg) nearer 3 (.313 vs .100).
    s = get_strategy("visionzip", keep=5, contextual=2, cls_token=False).select_before_llm(
        vctx(torch.eye(8), ZIP_ATT, 2, 4, keys=ZIP_KEYS))
    e = torch.eye(8)
    assert s.indices.tolist() == [0, 2, 3, 5, 7]
    torch.testing.assert_close(s.features, torch.stack([e[0] + e[1], e[2], e[3] + (e[4] + e[6]) / 2, e[5], e[7]]))
    assert s.groups.tolist() == [0, 0, 1, 2, 2, 3, 2, 4]


def test_visionzip_split_follows_the_authors():
    # the authors' 54:10 at 64, and that share of 10/64 contextual at other budgets (108:20 at 128, 162:30 at 192);
    # [CLS] is one of the dominant tokens, so 53 patches + [CLS] + 10 contextual at 64
    assert [contextual_count(u) for u in (64, 128, 192)] == [10, 20, 30]
    zip_ = get_strategy("visionzip", keep=64)
    assert zip_.split(64) == (54, 10) and zip_.split(36) == (30, 6) and zip_.split(1) == (1, 0)
    # an empty group's contextual token is its target alone; a budget of 1 is the [CLS] token alone
    c = vctx(torch.eye(8), ZIP_ATT, 2, 4, keys=ZIP_KEYS, cls_feature=torch.full((8,), 9.))
    one = get_strategy("visionzip", keep=1).select_before_llm(c)
    assert one.indices.tolist() == [0] and one.features[0].tolist() == [9.] * 8
    every = get_strategy("visionzip", keep=8).select_before_llm(c)
    assert every.features is None and every.indices.tolist() == list(range(8))
    with pytest.raises(ValueError, match="no \\[CLS\\]"):
        get_strategy("visionzip", keep=4).select_before_llm(vctx(torch.eye(8), None, 2, 4))


# -------------------------------------------------------------------------------------------------------- VisPruner
# 8 patches; mean [CLS] attention ranks them 5, 2, 7, 6, 0, 1, 3, 4. Features are unit vectors at angles (deg):
VP_ATT = torch.tensor([[[.08, .06, .20, .05, .04, .30, .10, .12]]])  # (L=1, H=1, N=8)
VP_FEATS = unit(97, 180, 0, 200, 260, 45, 90, 10)  # patch p at VP_FEATS[p]


def test_vispruner_by_hand_fewer_than_8_diverse():
    # keep 4, r = 0.5: important = int(4 * .5) = 2 -> patches 5, 2. The rest in attention order: [7, 6, 0, 1, 3, 4]
    # (R = 6), 2 diverse to keep. Round 1: A = [7, 0, 3], B = [6, 1, 4]; r' = min(8, 6 - 2, |A| = 3) = 3 drops all
    # of A (the authors' code takes r' = min(8, 4) = 4 > R // 2 and raises). Round 2 on [6, 1, 4]: A = [6, 4],
    # B = [1]; 6 (90 deg) is 90 deg from 1 (cos 0), 4 (260 deg) 80 deg (cos .17): 4 is the near-duplicate, dropped.
    s = get_strategy("vispruner", keep=4).select_before_llm(vctx(VP_FEATS, VP_ATT, 2, 4))
    assert s.indices.tolist() == [1, 2, 5, 6] and s.features is None and s.groups is None


def test_vispruner_by_hand_rounds_and_their_order():
    # keep 4, r = 0.25: important = 1 -> patch 5; the rest [2, 7, 6, 0, 1, 3, 4] (R = 7, odd: the authors' code
    # raises), 3 to keep, at most 2 dropped per round (per_round=2).
    # Round 1: A = [2, 6, 1, 4], B = [7, 0, 3]. Best cosine in B: 2 -> 7 (10 deg) .985; 6 -> 0 (7 deg) .993;
    #   1 -> 3 (20 deg) .940; 4 -> 3 (60 deg) .500. Drop the 2 highest (6, 2); go on with [1, 4] (descending score)
    #   then B: [1, 4, 7, 0, 3].
    # Round 2: A = [1, 7, 3], B = [4, 0]. 1 -> 4 (80 deg) .174; 7 -> 0 (87 deg) .052; 3 -> 4 (60 deg) .500.
    #   Drop 3 and 1: [7, 4, 0] remain. Kept: 5 + {7, 4, 0}; top-4 by attention would have been {5, 2, 7, 6}.
    s = get_strategy("vispruner", keep=4, important_ratio=0.25, per_round=2).select_before_llm(
        vctx(VP_FEATS, VP_ATT, 2, 4))
    assert s.indices.tolist() == [0, 4, 5, 7]
    assert remove_duplicates(VP_FEATS, torch.tensor([2, 7, 6, 0, 1, 3, 4]), 3, 2).tolist() == [7, 4, 0]
    assert get_strategy("vispruner").split(64) == (32, 32)
    assert get_strategy("vispruner", important_ratio=0.75).split(64) == (48, 16)  # the authors' README, MME


def vispruner_reading(features, scores, budget, ratio, per_round=8):
    """A step-by-step reading of VisPruner's encode_images in plain Python lists (one image), with |A| = ceil(R/2)
    and r' capped at |A| where the authors' tensor code breaks."""
    n = len(scores)
    ranked = sorted(range(n), key=lambda i: -scores[i])  # Python's sort is stable, as ours
    important = int(budget * ratio)
    diverse = budget - important
    rest = ranked[important:]
    unit_ = [[v / math.sqrt(sum(c * c for c in f)) for v in f] for f in features]
    while diverse > 0 and len(rest) > diverse:
        a, b = rest[0::2], rest[1::2]
        r = min(per_round, len(rest) - diverse, len(a))
        best = [max(sum(x * y for x, y in zip(unit_[i], unit_[j])) for j in b) for i in a]
        order = sorted(range(len(a)), key=lambda i: -best[i])
        rest = [a[i] for i in order[r:]] + b
    return sorted(ranked[:important] + (rest if diverse > 0 else []))


@pytest.mark.parametrize("budget,ratio", [(64, 0.5), (64, 0.75), (128, 0.5), (63, 0.5), (20, 0.75), (5, 0.5)])
def test_vispruner_equals_a_plain_reading_on_576_patches(budget, ratio):
    # where the authors' code runs (64 and 128 at 0.5, 64 at 0.75) these are their tokens; 63 (odd R), 20 (fewer
    # than 8 diverse) and 5 are budgets where it raises
    g = torch.Generator().manual_seed(budget)
    feats = torch.randn(576, 16, generator=g, dtype=torch.float64).float()
    att = torch.rand(1, 2, 576, generator=g, dtype=torch.float64).float()
    s = get_strategy("vispruner", keep=budget, important_ratio=ratio).select_before_llm(vctx(feats, att, 24, 24))
    reading = vispruner_reading(feats.double().tolist(), att[0].mean(0).tolist(), budget, ratio)
    assert s.indices.tolist() == reading and len(reading) == budget


# ------------------------------------------------------------------------------------------------------------- ToMe
def test_tome_one_round_by_hand_odd_count():
    # 5 tokens with keys at 0, 10, 105, 90, 45 deg. A = {0, 2, 4}, B = {1, 3}. Best links: 0 -> 1 (cos 10 = .985),
    # 2 -> 3 (cos 15 = .966), 4 -> 1 (cos 35 = .819). Asked for r = 3, ToMe caps it at t // 2 = 2 (not (t+1)//2):
    # 0 and 2 merge; the unmerged A token 4 comes first, then B: [4, 1, 3].
    keys = unit(0, 10, 105, 90, 45)
    x = torch.tensor([[0.], [1], [2], [3], [4]])
    out, k, size, index, dest = bipartite_merge(x, keys, torch.ones(5), torch.arange(5), r=3, return_dest=True)
    assert index.tolist() == [4, 1, 3] and size.tolist() == [1, 2, 2] and dest.tolist() == [1, 1, 2, 2, 0]
    assert out.flatten().tolist() == [4, 0.5, 2.5]
    spatial = bipartite_merge(x, keys, torch.ones(5), torch.arange(5), r=3, spatial=True)
    assert spatial[3].tolist() == [1, 3, 4]
    # keep 3 in one round (feature layer 0): tokens at patches 1 (0 + 1), 3 (2 + 3) and 4, in row-major order
    s = get_strategy("tome", keep=3).select_before_llm(vctx(x, torch.zeros(1, 1, 5), 1, 5, keys=keys))
    assert s.indices.tolist() == [1, 3, 4] and s.groups.tolist() == [0, 0, 1, 1, 2]
    assert s.features.flatten().tolist() == [0.5, 2.5, 4]


def tome_reading(features, keys, budget, rounds, spatial=False):
    """ToMe's bipartite_soft_matching + merge_wavg read step by step in plain Python, with this project's
    schedule (``rounds`` rounds of ceil((N - U) / rounds), capped at t // 2). Returns {patch: members}."""
    tokens = [{"x": list(f), "k": list(k), "size": 1.0, "patch": i, "members": {i}}
              for i, (f, k) in enumerate(zip(features, keys))]
    per_round = -(-(len(tokens) - budget) // rounds)
    cos = lambda u, v: sum(p * q for p, q in zip(u, v)) / math.sqrt(sum(p * p for p in u) * sum(q * q for q in v))  # noqa: E731
    while len(tokens) > budget:
        t = len(tokens)
        r = min(t - budget, per_round, t // 2)
        a, b = tokens[0::2], tokens[1::2]
        links = []
        for tok in a:
            sims = [cos(tok["k"], other["k"]) for other in b]
            links.append((max(sims), sims.index(max(sims))))
        ranked = sorted(range(len(a)), key=lambda i: -links[i][0])
        src, unm = ranked[:r], ranked[r:]
        merged = [dict(tok, members=set(tok["members"])) for tok in b]
        sums = [{"x": [v * tok["size"] for v in tok["x"]], "k": [v * tok["size"] for v in tok["k"]],
                 "size": tok["size"]} for tok in b]
        for i in src:
            tok, j = a[i], links[i][1]
            sums[j]["x"] = [s + v * tok["size"] for s, v in zip(sums[j]["x"], tok["x"])]
            sums[j]["k"] = [s + v * tok["size"] for s, v in zip(sums[j]["k"], tok["k"])]
            sums[j]["size"] += tok["size"]
            merged[j]["members"] |= tok["members"]
        for tok, s in zip(merged, sums):
            tok.update(x=[v / s["size"] for v in s["x"]], k=[v / s["size"] for v in s["k"]], size=s["size"])
        tokens = [a[i] for i in unm] + merged
        if spatial:
            tokens.sort(key=lambda tok: tok["patch"])
    return {tok["patch"]: (sorted(tok["members"]), tok["x"]) for tok in tokens}


@pytest.mark.parametrize("order", ["tome", "spatial"])
def test_tome_equals_a_step_by_step_reading(order):
    # 12 patches (3 x 4) with keys at hand-picked angles (no two links equally similar); the feature layer is 1, so
    # 2 rounds of r = ceil(7/2) = 4 to reach 5: 12 -> 8 -> 5 (the second capped by what is left, 3).
    # Round 1: A = 0, 37, 96, 173, 262, 331 deg links at 8, 17, 16, 23, 38, 21 deg: 0, 4, 2, 10 merge (into 11, 3,
    # 1, 11); out in ToMe's order [6, 8 | 1, 3, 5, 7, 9, 11]. Round 2 then pairs A = [6, 1, 5, 9] with
    # B = [8, 3, 7, 11]: 6 -> 7, 9 -> 8 and 1 -> 11 merge, 5 stays. Re-sorted into row-major order instead,
    # A = [1, 5, 7, 9], B = [3, 6, 8, 11]: 5 -> 6, 7 -> 6, 9 -> 8 merge: different groups.
    angles = [0, 20, 37, 80, 96, 150, 173, 200, 262, 300, 331, 352]
    keys = unit(*angles)
    feats = torch.arange(24.).reshape(12, 2)
    c = vctx(feats, torch.zeros(2, 1, 12), 3, 4, keys=keys, feature_layer=1)
    s = get_strategy("tome", keep=5, order=order).select_before_llm(c)
    reading = tome_reading(feats.tolist(), keys.double().tolist(), 5, 2, spatial=order == "spatial")
    assert s.indices.tolist() == sorted(reading)
    for pos, patch in enumerate(s.indices.tolist()):
        assert (s.groups == pos).nonzero().flatten().tolist() == reading[patch][0]
        torch.testing.assert_close(s.features[pos], torch.tensor(reading[patch][1]))
    groups = {p: m for p, (m, _) in reading.items()}
    assert groups == ({3: [3, 4], 5: [5], 7: [6, 7], 8: [8, 9], 11: [0, 1, 2, 10, 11]} if order == "tome" else
                      {1: [1, 2], 3: [3, 4], 6: [5, 6, 7], 8: [8, 9], 11: [0, 10, 11]})


# ------------------------------------------------------------------------------------------------------------ FastV
@pytest.mark.parametrize("m,ratio,kept", [(25, 0.5, 12), (27, 0.5, 14), (24, 0.5, 12), (25, 0.25, 19)])
def test_fastv_default_budget_is_the_authors_round(m, ratio, kept):
    # FastV's code keeps round(M * (1 - R)) (Python's round: halves to even, 12.5 -> 12, 13.5 -> 14); R = 50%
    assert get_strategy("fastv").ratio == 0.5
    row = torch.rand(2, m + 3, generator=torch.Generator().manual_seed(m))
    llm = LLMContext(layer=2, hidden_states=torch.zeros(m + 3, 4), attention_row=row, image_rows=torch.arange(2, m + 2),
                     patch_indices=torch.arange(m), vision=vctx(torch.zeros(m, 2), None, 1, m))
    out = get_strategy("fastv", ratio=ratio).select_in_llm(llm)
    assert len(out) == kept and get_strategy("fastv", ratio=ratio).default_budget(m) == kept
    assert out.tolist() == sorted(row.mean(0)[2:m + 2].topk(kept).indices.tolist())


def test_fastv_cost_uses_the_same_default():
    from pruning import cost
    from pruning.geometries import load_geometry

    g = load_geometry("llava-1.5-7b")
    s = cost.token_schedule(get_strategy("fastv"), g, 25, 10)
    assert s.visual[2:] == [12] * (len(s.visual) - 2)


# ------------------------------------------------------------------------------------------------------- PruMerge+
def test_prumerge_concat_attention_uses_the_recorded_cls_column(engines, images):
    """The concatenated-head [CLS] attention from the engine's rows, with each head's [CLS] entry as recorded,
    against a float64 softmax over the reader layer's concatenated q/k (what the authors' code computes)."""
    from pruning.strategies.prumerge_plus import concat_head_attention

    engine = engines("llava15")
    prepared = engine.prepare(images[0], QUESTIONS[0])
    layer = engine.geometry.feature_layer_index + 1
    seen = {}
    attn = engine.vision_layers[layer].self_attn
    hooks = [attn.q_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o[0])),
             attn.k_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o[0]))]
    try:
        v = engine.vision_pass(prepared)
    finally:
        for h in hooks:
            h.remove()
    q, k = seen["q"].double(), seen["k"].double()
    direct = (q[0] @ k.T / math.sqrt(q.shape[1])).softmax(-1)[1:]
    assert v.cls_self.shape == v.cls_attention.shape[:2]
    torch.testing.assert_close(v.cls_self + v.cls_attention.sum(-1), torch.ones_like(v.cls_self))
    ours = concat_head_attention(v.cls_attention[layer], v.cls_self[layer]).double()
    assert ((ours - direct).abs() / direct).max() < 2e-5
    scores = get_strategy("prumerge+").scores(v).double()
    torch.testing.assert_close(scores, ours)


# ---------------------------------------------------------------------------------------------- through the engine
def groups_consistent(sel, n):
    g = sel.groups
    assert g.shape == (n,) and int(g.min()) >= -1 and int(g.max()) < len(sel.indices)
    assert g[sel.indices].tolist() == list(range(len(sel.indices)))  # a kept patch points at its own token


@pytest.mark.parametrize("name", NEW)
def test_2025b_on_576_token_model(engines, images, name):
    engine = engines("llava15")
    r = engine.run(images[0], QUESTIONS[0], get_strategy(name, keep=64), max_new_tokens=3, warmup=0)
    kept = r.kept_final
    assert len(kept) == 64 and kept == sorted(set(kept)) and all(0 <= i < 576 for i in kept)
    assert r.image_tokens_per_layer == [64] * 6 and r.notes == []
    if name == "visionzip":  # 53 dominant patches + [CLS] + 10 contextual tokens; every patch in a group
        groups = torch.tensor(r.merge_groups)
        assert (groups >= 0).all() and groups[torch.tensor(r.kept)].tolist() == list(range(64))
        merged = torch.bincount(groups, minlength=64)
        assert int((merged == 1).sum()) >= 54 and int(merged.sum()) == 576
    else:
        assert r.merge_groups is None


@pytest.mark.parametrize("name", NEW)
def test_2025b_selection_on_the_576_token_model(engines, images, name):
    engine = engines("llava15")
    vision = engine.vision_pass(engine.prepare(images[2], QUESTIONS[1]))
    for budget in (1, 2, 17, 63, 64, 128, 192, 575):
        s = get_strategy(name, keep=budget).select_before_llm(vision)
        assert len(s.indices) == budget and s.indices.tolist() == sorted(set(s.indices.tolist()))
        if name == "visionzip":
            groups_consistent(s, 576)
            assert s.features.shape == (budget, vision.patch_features.shape[1])


@pytest.mark.parametrize("name", NEW)
def test_2025b_full_budget_reproduces_unpruned_answer(engines, images, name):
    engine = engines("llava15")
    ref = engine.run(images[1], QUESTIONS[1], get_strategy("none"), max_new_tokens=6, warmup=0)
    r = engine.run(images[1], QUESTIONS[1], get_strategy(name, keep=576), max_new_tokens=6, warmup=0)
    assert r.generated_tokens == ref.generated_tokens


@pytest.mark.parametrize("name", NEW)
def test_2025b_on_the_embedded_model(name):
    from pruning.shapes import world

    engine = _embedded_engine()
    scene = world.make_scene(world.HELD_OUT_SEED + 3)
    r = engine.run(scene.image, "How many objects are there?", get_strategy(name, keep=36), max_new_tokens=3,
                   warmup=0)
    assert r.answer and r.visual_tokens == 144 and r.notes == []
    assert r.image_tokens_per_layer == [36] * len(r.image_tokens_per_layer) and len(r.kept_final) == 36


def test_2025b_cli(capsys):
    from pruning.cli import main

    argv = ["ask", "--image", "assets/examples/scene.png", "--question", "How many objects are there?",
            "--max-new-tokens", "2", "--json"]
    assert main(argv + ["--strategy", "visionzip", "--keep", "36", "--param", "cls_token=false"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["cls_token"] is False and out["params"]["positions"] == "rearrange"
    assert out["visual_tokens_kept"] == 36
    assert main(argv + ["--strategy", "vispruner", "--keep", "20", "--param", "important_ratio=0.75"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["important_ratio"] == 0.75 and out["visual_tokens_kept"] == 20


def test_2025b_app_controls_and_cost():
    from pruning import cost
    from pruning.compare import strategy_controls
    from pruning.geometries import load_geometry

    controls = strategy_controls()
    zip_ = {c["name"]: c for c in controls["visionzip"]}
    assert {n: c["default"] for n, c in zip_.items()} == {"positions": "rearrange", "contextual": None,
                                                         "cls_token": True}
    assert zip_["cls_token"]["kind"] == "bool" and zip_["contextual"]["kind"] == "int"
    vp = {c["name"]: c for c in controls["vispruner"]}
    assert {n: c["default"] for n, c in vp.items()} == {"positions": "rearrange", "important_ratio": 0.5,
                                                       "per_round": 8}
    assert vp["important_ratio"]["kind"] == "float" and vp["per_round"]["kind"] == "int"
    tome = {c["name"]: c for c in controls["tome"]}
    assert tome["order"]["choices"] == ["tome", "spatial"] and tome["order"]["default"] == "tome"
    g = load_geometry("llava-1.5-7b")
    for name in NEW:
        assert cost.token_schedule(get_strategy(name, keep=64), g, 576, 60).visual == [64] * 32


def test_2025b_compare_cards():
    """The app's Compare cards (with a parameter the app passes) on the embedded model: VisionZip's merge groups
    reach the overlay's input."""
    from pathlib import Path

    from pruning.compare import Scope

    scope = Scope(threads=torch.get_num_threads())
    image = str(Path(__file__).resolve().parents[1] / "assets" / "examples" / "scene.png")
    cards = scope.compare(image, "How many objects are there?", NEW, keep=36, repeats=1,
                          params={"vispruner": {"important_ratio": 0.75}})
    by = {c["strategy"]: c for c in cards}
    assert [c["strategy"] for c in cards] == ["none", *NEW]
    assert by["visionzip"]["visual_tokens_kept"] == by["vispruner"]["visual_tokens_kept"] == 36
    assert len(by["visionzip"]["merge_groups"]) == 144 and by["vispruner"]["params"]["important_ratio"] == 0.75


def test_2025b_sweep():
    from pruning.compare import Scope

    rows = Scope(threads=torch.get_num_threads()).sweep(NEW, [36], n=5, types=["colour"], progress=False)
    labels = [r["label"] for r in rows]
    assert labels[0] == "none" and all(any(lab.startswith(n) for lab in labels) for n in NEW)
