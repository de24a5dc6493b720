"""The later families' built-in geometries (issue 27): token counts and FLOPs at full budget against hand
calculations written here from the public configs' numbers (not from pruning.cost's helpers)."""

import json

import pytest
from pruning import cli, cost
from pruning.geometries import ALL_GEOMETRIES, BUILT_IN, FAMILY_GEOMETRIES, load_geometry
from pruning.strategies import get_strategy

T = 20  # text tokens


def llm_layer(s, d, heads, kv, hd, mlp):
    """One decoder layer over s tokens: q, k, v, o projections, the full s x s square, a gated MLP (2 per MAC)."""
    return (2 * s * d * (heads * hd + 2 * kv * hd) + 2 * s * heads * hd * d + 4 * s * s * heads * hd
            + 2 * s * d * mlp * 3)


QWEN7B = dict(d=3584, heads=28, kv=4, hd=128, mlp=18944)


# Hand numbers for each geometry: visual tokens in the LLM, ViT passes, tokens per pass, one ViT layer's FLOPs
# (full attention), the patch embedding per pass, the projector; from the configs named in pruning/geometries.py.
def vit_layer(t, d, m, keys=None, mlp_matrices=2):
    keys = t if keys is None else keys
    return 8 * t * d * d + 4 * t * keys * d + 2 * mlp_matrices * t * d * m


HAND = {
    # SigLIP-so400m/14 at 384: 27*27 = 729, no [CLS]; base + 2x2 crops; 729 + 54*55 packed rows; 26 layers
    "llava-onevision-7b": dict(
        visual=729 + 54 * 55, passes=5, vit_tokens=729, vit_layers=26,
        vit=5 * (2 * 729 * 3 * 14 * 14 * 1152 + 26 * vit_layer(729, 1152, 4304)),
        projector=2 * 5 * 729 * (1152 * 3584 + 3584 * 3584), llm=QWEN7B, llm_layers=28),
    # CLIP-L/14 at 336: 576 + [CLS]; base + 2x2 crops; 576 + 48*49 packed rows; projector on 5*576 rows
    "llava-next-7b": dict(
        visual=576 + 48 * 49, passes=5, vit_tokens=577, vit_layers=24,
        vit=5 * (2 * 576 * 3 * 14 * 14 * 1024 + 24 * vit_layer(577, 1024, 4096)),
        projector=2 * 5 * 576 * (1024 * 4096 + 4096 * 4096),
        llm=dict(d=4096, heads=32, kv=32, hd=128, mlp=11008), llm_layers=32),
    # Qwen2.5-VL at 672 px: 48*48 = 2304 patches (conv over 3 channels x 2 frames), 28 windowed blocks attending
    # within 64 patches, 4 full blocks, gated MLP 3420; PatchMerger 5120 -> 5120 -> 3584 on 576 merged tokens
    "qwen2.5-vl-7b": dict(
        visual=24 * 24, passes=1, vit_tokens=2304, vit_layers=32,
        vit=(2 * 2304 * 6 * 14 * 14 * 1280 + 28 * vit_layer(2304, 1280, 3420, keys=64, mlp_matrices=3)
             + 4 * vit_layer(2304, 1280, 3420, mlp_matrices=3)),
        projector=2 * 576 * (5120 * 5120 + 5120 * 3584), llm=QWEN7B, llm_layers=28),
    # InternViT-300M/14 at 448: 1024 + [CLS]; 2x2 tiles + thumbnail; pixel shuffle -> 256 per tile;
    # LayerNorm, 4096 -> 3584 -> 3584
    "internvl3-8b": dict(
        visual=5 * 256, passes=5, vit_tokens=1025, vit_layers=24,
        vit=5 * (2 * 1024 * 3 * 14 * 14 * 1024 + 24 * vit_layer(1025, 1024, 4096)),
        projector=2 * 1280 * (4096 * 3584 + 3584 * 3584), llm=QWEN7B, llm_layers=28),
}


def test_the_four_families_are_built_in_beside_llava15():
    assert set(FAMILY_GEOMETRIES) == set(HAND)
    assert set(ALL_GEOMETRIES) == set(BUILT_IN) | set(HAND)
    assert set(BUILT_IN) == {"llava-1.5-7b", "llava-1.5-13b"}  # speed builds only these (real_width_geometry)
    for name in HAND:
        assert load_geometry(name) is FAMILY_GEOMETRIES[name]


@pytest.mark.parametrize("name", sorted(HAND))
def test_token_counts(name):
    h = HAND[name]
    e = cost.estimate(name, T)
    tok = e["tokens"]
    assert e["visual_tokens"] == h["visual"]
    assert tok["vit_crops"] == h["passes"]
    assert tok["vit_per_layer"] == [h["vit_tokens"]] * h["vit_layers"]
    assert tok["llm_per_layer"] == [h["visual"] + T] * h["llm_layers"]
    assert e["geometry"]["llm"]["layers"] == h["llm_layers"]


@pytest.mark.parametrize("name", sorted(HAND))
def test_flops_at_full_budget_match_the_hand_calculation(name):
    h, L = HAND[name], HAND[name]["llm"]
    f = cost.estimate(name, T)["flops"]
    s = h["visual"] + T
    assert f["llm_per_layer"][0] == llm_layer(s, **L)
    assert f["layers"] == h["llm_layers"] * llm_layer(s, **L)
    assert f["vit"] == h["vit"]
    assert f["projector"] == h["projector"]
    assert f["total"] == f["vit"] + f["projector"] + f["layers"] + f["lm_head"]


def test_qwen_windows_cost_less_than_full_attention_would():
    """The windowed blocks' attention is t x 64 rather than t x t: counted as full, the ViT would cost more by
    exactly 28 blocks x 4 t (t - 64) d."""
    g = FAMILY_GEOMETRIES["qwen2.5-vl-7b"]
    full = cost.vision_flops(cost.VisionShape(**{**g.vision.__dict__, "window": 0}))
    windowed = cost.estimate(g, T)["flops"]["vit"]
    assert full - windowed == 28 * 4 * 2304 * (2304 - 64) * 1280


def test_siglip_has_no_cls_in_the_patch_embedding():
    """Every one of SigLIP's 729 tokens is a patch (no [CLS] subtracted); CLIP's 577 hold 576 patches."""
    sig = FAMILY_GEOMETRIES["llava-onevision-7b"].vision
    clip = FAMILY_GEOMETRIES["llava-next-7b"].vision
    assert cost.vision_flops(sig, []) == 2 * 729 * 3 * 14 * 14 * 1152
    assert cost.vision_flops(clip, []) == 2 * 576 * 3 * 14 * 14 * 1024


@pytest.mark.parametrize("name", sorted(HAND))
def test_pruning_before_the_llm_keeps_the_vit_and_projector(name):
    """The families project every row before a strategy prunes: ViT and projector do not change with the budget;
    the LLM layers shrink to the budget."""
    h = HAND[name]
    keep = h["visual"] // 4
    full = cost.estimate(name, T)
    pruned = cost.estimate(name, T, strategy=get_strategy("random", keep=keep))
    assert pruned["tokens"]["llm_per_layer"] == [keep + T] * h["llm_layers"]
    assert pruned["flops"]["vit"] == full["flops"]["vit"] and pruned["flops"]["projector"] == full["flops"]["projector"]
    assert pruned["flops"]["llm_per_layer"][0] == llm_layer(keep + T, **h["llm"])
    assert 1 < pruned["speedup"] < full["flops"]["total"] / (full["flops"]["vit"] + full["flops"]["projector"])


def test_fastv_on_a_family_drops_at_its_layer():
    h = HAND["qwen2.5-vl-7b"]
    e = cost.estimate("qwen2.5-vl-7b", T, strategy=get_strategy("fastv", keep=144, layer=2))
    assert e["tokens"]["visual_per_layer"] == [576, 576] + [144] * 26
    assert e["flops"]["llm_per_layer"][2] == llm_layer(144 + T, **h["llm"])


def test_ivtp_is_refused_on_the_families():
    with pytest.raises(ValueError, match="only on LLaVA-1.5"):
        cost.estimate("internvl3-8b", T, strategy=get_strategy("ivtp", keep=64))


def test_llava15_is_unchanged_by_the_new_fields():
    """LLaVA-1.5's projector runs after pruning (on the kept rows only) and its ViT once."""
    e = cost.estimate("llava-1.5-7b", T, strategy=get_strategy("random", keep=64))
    assert e["tokens"]["vit_crops"] == 1 and e["tokens"]["projector_rows"] == 64
    assert e["flops"]["projector"] == 2 * 64 * (1024 * 4096 + 4096 * 4096)
    assert e["flops"]["vit"] == 2 * 576 * 3 * 14 * 14 * 1024 + 24 * vit_layer(577, 1024, 4096)


@pytest.mark.parametrize("name", sorted(HAND))
def test_cli_prints_each_geometry(capsys, name):
    assert cli.main(["cost", "--geometry", name, "--text-tokens", str(T)]) == 0
    out = capsys.readouterr().out
    h = HAND[name]
    assert out.startswith(f"{name}: {h['visual']} visual + {T} text tokens")
    assert "image: " in out and "all projected before pruning" in out
    if h["passes"] > 1:
        assert f"{h['passes']} crops/tiles x {h['vit_tokens']} tokens x {h['vit_layers']} layers" in out
    assert cli.main(["cost", "--geometry", name, "--text-tokens", str(T), "--json"]) == 0
    e = json.loads(capsys.readouterr().out)
    assert e["geometry"]["family"] == FAMILY_GEOMETRIES[name].family
    assert e["flops"]["total"] == cost.estimate(name, T)["flops"]["total"]


@pytest.mark.parametrize("name", sorted(HAND))
def test_speed_builds_the_family_geometries_at_their_real_widths(name):
    from pruning.speed import resolve_geometry

    assert resolve_geometry(name) == {"geometry": name, "llm_layers": 2, "vit_layers": 4, "vocab": 32064}


def test_pooling_on_a_packed_strip_says_it_is_not_a_grid():
    """The anyres rows are the engine's 1 x N strip: pooling to keep K keeps round(sqrt(K N)) of them, and says so."""
    n = HAND["llava-next-7b"]["visual"]
    e = cost.estimate("llava-next-7b", T, strategy=get_strategy("pooling", keep=700))
    assert e["tokens"]["visual_per_layer"][0] == round((700 * n) ** 0.5)
    assert any("1 x N strip" in note for note in e["notes"])
