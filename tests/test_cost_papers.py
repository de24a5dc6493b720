"""`cost`: the FLOPs estimate from a geometry alone, against the papers' own tables (docs/performance.md), the
engine's own count, and the CLI's schema and errors.

Paper values are copied from /work/shared/papers (ivtp.txt Tables 1-3 and 9, vtw.txt Tables 2 and 4); each must be
reproduced within 5% under that paper's convention (``pruning.cost.CONVENTIONS``)."""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from pruning import cli, cost
from pruning.geometries import BUILT_IN, load_geometry
from pruning.strategies import Strategy, available, get_strategy

from .conftest import QUESTIONS

ROOT = Path(__file__).resolve().parents[1]
G7, G13 = BUILT_IN["llava-1.5-7b"], BUILT_IN["llava-1.5-13b"]
TOL = 0.05


def close(ours, paper, tol=TOL):
    return abs(ours / paper - 1) <= tol


def tflops(geometry, text, strategy=None, convention="prunescope", visual=None, part="total"):
    return cost.estimate(geometry, text, visual_tokens=visual, strategy=strategy, convention=convention)["tflops"][part]


def in_vit(geometry, text, part="total"):
    """IVTP's vision-only baselines (Random, TopK, EViT, ToMe) prune inside the ViT: ToMe's constant r per layer."""
    key = {"total": "total", "vit": "vit", "llm": "llm"}[part]
    return cost.schedule_flops(geometry, cost.in_vit_schedule(geometry, 64, text), "ivtp")[key] / 1e12


# ---------------------------------------------------------------------------------------------------- IVTP
# Table 3 (LLaVA-1.5-7B, 576 visual tokens, 64 kept, text tokens 128..1024), TFLOPs.
IVTP_T3 = {
    "LLaVA-1.5-7B": {128: 9.9, 256: 11.7, 512: 15.4, 1024: 22.9},
    "TopK": {128: 2.7, 256: 4.5, 512: 8.0, 1024: 15.2},
    "ToMe": {128: 2.7, 256: 4.5, 512: 8.0, 1024: 15.2},
    "Honeybee": {128: 2.9, 256: 4.6, 512: 8.1, 1024: 15.4},
    "Qwen-VL": {128: 2.9, 256: 4.6, 512: 8.1, 1024: 15.3},
    "IVTP": {128: 3.0, 256: 4.7, 512: 8.2, 1024: 15.5},
}


def ivtp_row(method, geometry, text):
    """Our count of an IVTP table row: the unpruned model; the vision-only baselines pruned inside the ViT (the
    paper's setting); the projector-side compressors (Honeybee, Qwen-VL, spatial pooling) as 64 tokens after a
    full ViT (pooling keep=64: 8 x 8); IVTP with its own schedule (``ivtp`` keep=64)."""
    if method.startswith("LLaVA"):
        return tflops(geometry, text, convention="ivtp")
    if method in ("TopK", "ToMe", "Random", "EViT"):
        return in_vit(geometry, text)
    if method in ("Honeybee", "Qwen-VL", "Spatial pooling"):
        return tflops(geometry, text, get_strategy("pooling", keep=64), "ivtp")
    if method == "IVTP":
        return tflops(geometry, text, get_strategy("ivtp", keep=64), "ivtp")
    raise KeyError(method)


@pytest.mark.parametrize("method,text", [(m, t) for m in IVTP_T3 for t in IVTP_T3[m]])
def test_ivtp_table3(method, text):
    ours, paper = ivtp_row(method, G7, text), IVTP_T3[method][text]
    assert close(ours, paper), (method, text, ours, paper)


# Tables 1 and 2 (TFLOPs column; 512 text tokens), 7B and 13B.
IVTP_T12 = {
    "llava-1.5-7b": {"LLaVA-1.5-7B": 15.4, "Random": 8.0, "TopK": 8.0, "Spatial pooling": 8.1, "EViT": 8.0,
                     "ToMe": 8.0, "Honeybee": 8.1, "Qwen-VL": 8.1, "IVTP": 8.2},
    "llava-1.5-13b": {"LLaVA-1.5-13B": 29.4, "Random": 15.4, "TopK": 15.4, "Spatial pooling": 15.6, "EViT": 15.4,
                      "ToMe": 15.4, "Honeybee": 15.4, "Qwen-VL": 15.4, "IVTP": 15.6},
}


@pytest.mark.parametrize("geometry,method", [(g, m) for g in IVTP_T12 for m in IVTP_T12[g]])
def test_ivtp_tables_1_2(geometry, method):
    ours, paper = ivtp_row(method, BUILT_IN[geometry], 512), IVTP_T12[geometry][method]
    assert close(ours, paper), (geometry, method, ours, paper)


# Table 9 (7B, 512 text tokens): ViT, LLM, total TFLOPs (the "extra" column is not modelled: IVTP 0.080 for its CLIP
# text encoder and scoring, Qwen-VL 0.003 for its resampler).
IVTP_T9 = {
    "LLaVA-1.5-7B": {"vit": 0.361, "llm": 15.003, "total": 15.364},
    "TopK": {"vit": 0.190, "llm": 7.772, "total": 7.962},
    "ToMe": {"vit": 0.190, "llm": 7.772, "total": 7.962},
    "Qwen-VL": {"vit": 0.360, "llm": 7.772, "total": 8.135},
    "IVTP": {"vit": 0.202, "llm": 7.946, "total": 8.228},
}


@pytest.mark.parametrize("method,part", [(m, p) for m in IVTP_T9 for p in ("vit", "llm", "total")])
def test_ivtp_table9(method, part):
    if method in ("TopK", "ToMe"):
        ours = in_vit(G7, 512, part)
    else:
        strategy = {"LLaVA-1.5-7B": None, "Qwen-VL": get_strategy("pooling", keep=64),
                    "IVTP": get_strategy("ivtp", keep=64)}[method]
        ours = tflops(G7, 512, strategy, "ivtp", part=part)
    paper = IVTP_T9[method][part]
    assert close(ours, paper), (method, part, ours, paper)


def test_ivtp_convention_is_the_papers_baseline():
    # the unpruned 7B at 512 text tokens: 0.366 + 14.998 = 15.364 TFLOPs, Table 9's total to the digit
    e = cost.estimate(G7, 512, convention="ivtp")
    assert round(e["tflops"]["total"], 3) == 15.364
    # logits on the last position only would be 1.9% under the table's LLM column
    assert tflops(G7, 512, convention="prunescope", part="llm") / IVTP_T9["LLaVA-1.5-7B"]["llm"] < 0.985


def test_our_after_vit_baselines_against_ivtp_table3():
    """Documented mismatch: this project's topk-sim / tome / random / evit prune after the full ViT, the paper's
    inside it; at 512+ text tokens the difference is within 5%, at 128 text tokens it is +8%."""
    ours = {t: tflops(G7, t, get_strategy("topk-sim", keep=64), "ivtp") for t in (128, 256, 512, 1024)}
    assert 1.05 < ours[128] / IVTP_T3["TopK"][128] < 1.10
    for t in (256, 512, 1024):
        assert close(ours[t], IVTP_T3["TopK"][t])
    for name in ("random", "evit", "tome"):
        assert tflops(G7, 128, get_strategy(name, keep=64), "ivtp") == pytest.approx(ours[128])


def test_ivtp_schedule_from_the_strategy():
    e = cost.estimate(G7, 512, strategy=get_strategy("ivtp", keep=64), convention="ivtp")
    vit, visual = e["tokens"]["vit_per_layer"], e["tokens"]["visual_per_layer"]
    s = get_strategy("ivtp", keep=64)
    vit_at, llm_at = s.vit_prune_layers(24, 22), s.llm_drop_layers(32)
    assert (vit_at, llm_at) == ([2, 5, 8, 11, 14, 17, 20], [3, 6, 9, 12])
    assert vit[:3] == [577] * 3 and vit[-1] == e["tokens"]["projected"] + 1 and len(vit) == 24
    assert all(a >= b for a, b in zip(vit, vit[1:]))
    assert visual[0] == e["tokens"]["projected"] and visual[12:] == [64] * 20
    changes = [i for i in range(1, 32) if visual[i] != visual[i - 1]]
    assert changes == llm_at


# ---------------------------------------------------------------------------------------------------- VTW
# Table 2 (TFLOPs on MME's average input: 576 visual + 65 text tokens, 641 in all, fitted from the 7B baseline and
# the same for 13B). K = 16 (7B) / 20 (13B): the table counts K layers with the vision tokens (--layer K).
MME_TEXT = 65
VTW_T2 = [
    ("llava-1.5-7b", None, 8.48), ("llava-1.5-7b", ("fastv", {"layer": 2}), 4.91),
    ("llava-1.5-7b", ("vtw", {"layer": 16}), 4.68),
    ("llava-1.5-13b", None, 16.50), ("llava-1.5-13b", ("fastv", {"layer": 2}), 9.56),
    ("llava-1.5-13b", ("vtw", {"layer": 20}), 9.10),
]


@pytest.mark.parametrize("geometry,strategy,paper", VTW_T2)
def test_vtw_table2_llava15(geometry, strategy, paper):
    s = get_strategy(strategy[0], **strategy[1]) if strategy else None
    ours = tflops(BUILT_IN[geometry], MME_TEXT, s, "vtw")
    assert close(ours, paper), (geometry, strategy, ours, paper)


def test_vtw_mme_length_fits_both_models():
    # the one fitted number (text tokens) reproduces the 7B and the 13B baselines alike
    assert close(tflops(G7, MME_TEXT, convention="vtw"), 8.48, 0.002)
    assert close(tflops(G13, MME_TEXT, convention="vtw"), 16.50, 0.003)


def test_vtw_eq5_k_is_one_layer_short_of_the_table():
    """Eq. 5's K = 16 (layers 1..15 with vision; our vtw layer=15, the authors' code) gives 5.6% under Table 2's
    7B figure: the table counts one more layer with vision tokens (docs/performance.md)."""
    ours = tflops(G7, MME_TEXT, get_strategy("vtw", layer=15), "vtw")
    assert 0.93 < ours / 4.68 < 0.95
    assert 0.95 < tflops(G13, MME_TEXT, get_strategy("vtw", layer=19), "vtw") / 9.10 < 0.96


# LLaVA-NeXT-7B (the same Vicuna-7B LLM): visual tokens vary with the image (anyres); fitted, stated in the doc.
NEXT_MME_VISUAL = 1992  # Table 2: from the baseline 28.73 with MME's 65 text tokens
NEXT_SQA_VISUAL, NEXT_SQA_TEXT = 1534, 131  # Table 4: from the baseline 22.9 and VTW's 12.3


@pytest.mark.parametrize("strategy,paper", [(None, 28.73), (("fastv", {"layer": 2}), 15.67),
                                            (("vtw", {"layer": 16}), 14.80)])
def test_vtw_table2_llava_next(strategy, paper):
    s = get_strategy(strategy[0], **strategy[1]) if strategy else None
    ours = tflops(G7, MME_TEXT, s, "vtw", visual=NEXT_MME_VISUAL)
    assert close(ours, paper), (strategy, ours, paper)


@pytest.mark.parametrize("strategy,paper", [(None, 22.9), (("fastv", {"layer": 2}), 12.9),
                                            (("vtw", {"layer": 16}), 12.3)])
def test_vtw_table4(strategy, paper):
    s = get_strategy(strategy[0], **strategy[1]) if strategy else None
    ours = tflops(G7, NEXT_SQA_TEXT, s, "vtw", visual=NEXT_SQA_VISUAL)
    assert close(ours, paper), (strategy, ours, paper)


# ---------------------------------------------------------------------------------------------------- FastV
def fastv_closed_form(geometry, n, n_hat, k):
    """FastV's theoretical FLOPs ratio: [K f(n) + (T - K) f(n^)] / [T f(n)], f = 4nd^2 + 2n^2d + 2ndm."""
    d, m, layers = geometry.llm.hidden, geometry.llm.intermediate, geometry.llm.layers
    f = lambda x: 4 * x * d * d + 2 * x * x * d + 2 * x * d * m  # noqa: E731
    return (k * f(n) + (layers - k) * f(n_hat)) / (layers * f(n))


@pytest.mark.parametrize("geometry", [G7, G13], ids=["7b", "13b"])
@pytest.mark.parametrize("k,ratio", [(2, 0.5), (2, 0.75), (3, 0.5)])
def test_fastv_formula(geometry, k, ratio):
    e = cost.estimate(geometry, MME_TEXT, strategy=get_strategy("fastv", layer=k, ratio=ratio), convention="fastv")
    n = 576 + MME_TEXT
    n_hat = n - int(576 * ratio)
    assert e["ratio"] == pytest.approx(fastv_closed_form(geometry, n, n_hat, k), rel=1e-12)


def test_fastv_formula_against_vtw_fastv_rows():
    # VTW's FastV rows as a share of the baseline: 57.90% (7B), 57.94% (13B)
    for geometry, paper in ((G7, 0.5790), (G13, 0.5794)):
        e = cost.estimate(geometry, MME_TEXT, strategy=get_strategy("fastv", layer=2), convention="fastv")
        assert close(e["ratio"], paper), (geometry.name, e["ratio"], paper)


# ---------------------------------------------------------------------------------------------------- engine
ENGINE_CASES = [("none", {}), ("random", {"keep": 64}), ("pooling", {"keep": 50}), ("vtc-cls", {"keep": 100}),
                ("fastv", {"keep": 32, "layer": 2}), ("fastv", {"layer": 3}), ("vtw", {}), ("vtw", {"layer": 4}),
                ("random", {"keep": 10, "stage": "llm", "layer": 1}), ("ivtp", {"keep": 48}), ("tome", {"keep": 40}),
                ("prumerge+", {"keep": 30}), ("evit", {"keep": 20}), ("kmeans", {"keep": 16})]


@pytest.mark.parametrize("name,params", ENGINE_CASES)
def test_prunescope_convention_is_what_the_engine_reports(engines, images, model_dirs, name, params):
    """Counts derived from the strategy object equal those the engine runs, and the FLOPs equal Result.tflops."""
    engine = engines("llava15")
    strategy = get_strategy(name, **params)
    result = engine.run(images[0], QUESTIONS[0], strategy, max_new_tokens=1, warmup=0)
    visual = engine.geometry.n_patches
    text = result.tokens_per_layer[0] - result.image_tokens_per_layer[0]
    e = cost.estimate(load_geometry(str(model_dirs["llava15"])), text, strategy=strategy)
    assert e["tokens"]["visual_per_layer"] == result.image_tokens_per_layer
    assert e["tokens"]["llm_per_layer"] == result.tokens_per_layer
    assert e["tokens"]["vit_per_layer"] == result.vit_tokens_per_layer
    assert e["visual_tokens"] == visual
    assert e["tflops"]["vit"] == pytest.approx(result.tflops["vision"], rel=1e-12)
    assert e["tflops"]["total"] - e["tflops"]["vit"] == pytest.approx(result.tflops["prefill"], rel=1e-9)


def test_local_directory_geometry(model_dirs, engines):
    g = load_geometry(str(model_dirs["llava15"]))
    engine = engines("llava15")
    assert g.llm == engine.llm_shape and g.vision == engine.vision_shape
    assert (g.rows, g.cols, g.feature_layer_index) == (engine.geometry.rows, engine.geometry.cols,
                                                        engine.geometry.feature_layer_index)


def test_built_in_geometries_are_the_public_configs():
    assert (G7.llm.hidden, G7.llm.intermediate, G7.llm.layers, G7.llm.heads, G7.llm.vocab) == (4096, 11008, 32, 32,
                                                                                                32064)
    assert (G13.llm.hidden, G13.llm.intermediate, G13.llm.layers, G13.llm.heads, G13.llm.vocab) == (5120, 13824, 40,
                                                                                                     40, 32064)
    for g in (G7, G13):
        v = g.vision
        assert (v.hidden, v.intermediate, v.layers, v.patch_size, v.n_tokens) == (1024, 4096, 24, 14, 577)
        assert v.projector_out == g.llm.hidden and g.feature_layer_index == 22 and g.n_patches == 576
    # projector 1024 -> 4096 -> 4096 on 576 tokens
    assert cost.projector_flops(G7.vision, 576) == 2 * 576 * (1024 * 4096 + 4096 * 4096)


# ---------------------------------------------------------------------------------------------------- counts
def test_fewer_kept_fewer_flops():
    for name, extra in (("random", {}), ("vtc-cls", {}), ("pooling", {}), ("tome", {}),
                        ("fastv", {"layer": 2}), ("random", {"stage": "llm", "layer": 5}), ("ivtp", {})):
        totals = [tflops(G7, 64, get_strategy(name, keep=k, **extra)) for k in (576, 288, 192, 128, 64, 16)]
        assert all(a > b for a, b in zip(totals, totals[1:])), (name, totals)
    layers = [tflops(G7, 64, get_strategy("vtw", layer=k)) for k in (30, 20, 16, 8, 2)]
    assert all(a > b for a, b in zip(layers, layers[1:]))
    fastv = [tflops(G7, 64, get_strategy("fastv", layer=k, keep=64)) for k in (20, 10, 4, 2)]
    assert all(a > b for a, b in zip(fastv, fastv[1:]))


@pytest.mark.parametrize("convention", list(cost.CONVENTIONS))
def test_in_llm_counts_are_non_increasing(convention):
    for s in (get_strategy("fastv", layer=2), get_strategy("fastv", keep=64, layer=10), get_strategy("vtw"),
              get_strategy("ivtp", keep=64), get_strategy("random", keep=100, stage="llm", layer=3),
              get_strategy("vtc-cls", keep=64, stage="llm", layer=2)):
        e = cost.estimate(G13, 100, strategy=s, convention=convention)
        visual, per_layer = e["tokens"]["visual_per_layer"], e["flops"]["llm_per_layer"]
        assert all(a >= b for a, b in zip(visual, visual[1:])), s
        assert all(a >= b for a, b in zip(per_layer, per_layer[1:])), s
        assert e["ratio"] < 1


def test_pooling_counts_its_grid():
    e = cost.estimate(G7, 64, strategy=get_strategy("pooling", keep=192))
    assert e["tokens"]["projected"] == 14 * 14  # round(24 sqrt(1/3)) = 14
    assert any("14 x 14" in n for n in e["notes"])


def test_every_strategy_counts_or_says_why():
    for name in available():
        try:
            strategy = get_strategy(name, keep=64)
        except ValueError:  # vtw: keep must be 0 or unset
            strategy = get_strategy(name)
        try:
            e = cost.estimate(G7, 64, strategy=strategy)
        except ValueError as err:
            assert "cannot be derived without running the model" in str(err)
        else:
            assert e["tokens"]["visual_per_layer"][-1] <= 64 or name == "none"


def test_uncountable_strategy_is_refused():
    @dataclass
    class Oracle(Strategy):  # not registered: a strategy this module has no rule for
        name = "oracle-test"

    with pytest.raises(ValueError, match="cannot be derived without running the model"):
        cost.token_schedule(Oracle(keep=10), G7, 576, 64)


# ---------------------------------------------------------------------------------------------------- CLI
def run_cli(capsys, *argv):
    code = cli.main(["cost", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cost_json_schema(capsys):
    code, out, err = run_cli(capsys, "--geometry", "llava-1.5-7b", "--text-tokens", "64", "--strategy", "fastv",
                             "--keep", "128", "--layer", "3", "--json")
    assert code == 0
    e = json.loads(out)
    assert set(e) == {"geometry", "convention", "strategy", "visual_tokens", "text_tokens", "tokens", "flops",
                      "tflops", "baseline_tflops", "ratio", "speedup", "notes"}
    assert set(e["tokens"]) == {"vit_per_layer", "vit_crops", "projected", "projector_rows", "visual_per_layer",
                                "llm_per_layer"}
    assert e["tokens"]["vit_crops"] == 1 and e["tokens"]["projector_rows"] == e["tokens"]["projected"] == 576
    assert set(e["flops"]) == {"vit", "projector", "llm_per_layer", "layers", "lm_head", "llm", "total"}
    assert set(e["tflops"]) == {"vit", "projector", "layers", "lm_head", "llm", "total"}
    assert e["geometry"]["name"] == "llava-1.5-7b" and e["geometry"]["llm"]["layers"] == 32
    assert e["convention"]["name"] == "prunescope" and e["strategy"]["name"] == "fastv"
    assert e["strategy"]["params"]["keep"] == 128 and e["strategy"]["params"]["layer"] == 3
    assert (e["visual_tokens"], e["text_tokens"]) == (576, 64)
    f, t = e["flops"], e["tokens"]
    assert len(f["llm_per_layer"]) == len(t["llm_per_layer"]) == len(t["visual_per_layer"]) == 32
    assert len(t["vit_per_layer"]) == 24
    assert t["visual_per_layer"] == [576] * 3 + [128] * 29
    assert t["llm_per_layer"] == [v + 64 for v in t["visual_per_layer"]]
    assert all(isinstance(x, int) for x in f["llm_per_layer"] + [f["vit"], f["projector"], f["lm_head"]])
    assert f["layers"] == sum(f["llm_per_layer"]) and f["llm"] == f["layers"] + f["lm_head"]
    assert f["total"] == f["vit"] + f["projector"] + f["llm"]
    assert e["tflops"]["total"] == pytest.approx(f["total"] / 1e12)
    assert e["ratio"] == pytest.approx(e["tflops"]["total"] / e["baseline_tflops"])
    assert e["speedup"] == pytest.approx(1 / e["ratio"])


def test_cost_text_output(capsys):
    code, out, _ = run_cli(capsys, "--geometry", "llava-1.5-13b", "--text-tokens", "65", "--strategy", "vtw",
                           "--layer", "20", "--convention", "vtw")
    assert code == 0
    assert "0-19" in out and "20-39" in out and "of unpruned" in out and "not counted" in out


def test_cost_param_and_convention(capsys):
    code, out, _ = run_cli(capsys, "--geometry", "llava-1.5-7b", "--text-tokens", "65", "--strategy", "fastv",
                           "--param", "ratio=0.75", "--convention", "fastv", "--json")
    e = json.loads(out)
    assert code == 0 and e["strategy"]["params"]["ratio"] == 0.75 and e["tokens"]["visual_per_layer"][-1] == 144


def test_cost_local_directory(capsys, model_dirs):
    code, out, _ = run_cli(capsys, "--geometry", str(model_dirs["tiny"]), "--text-tokens", "10", "--json")
    e = json.loads(out)
    assert code == 0 and e["visual_tokens"] == 25 and e["ratio"] == 1


@pytest.mark.parametrize("argv,message", [
    (["--geometry", "llava-1.5-70b", "--text-tokens", "64"], "unknown geometry"),
    (["--geometry", "llava-1.5-7b", "--text-tokens", "-1"], "--text-tokens -1"),
    (["--geometry", "llava-1.5-7b", "--text-tokens", "64", "--visual-tokens", "-5"], "--visual-tokens -5"),
    (["--geometry", "llava-1.5-7b", "--text-tokens", "64", "--strategy", "random", "--keep", "600"],
     "more than the 576 visual tokens"),
    (["--geometry", "llava-1.5-7b", "--text-tokens", "64", "--visual-tokens", "100", "--strategy", "random",
      "--keep", "101"], "more than the 100 visual tokens"),
    (["--geometry", "llava-1.5-7b", "--text-tokens", "64", "--strategy", "random", "--keep", "-3"], "--keep -3"),
    (["--geometry", "llava-1.5-7b", "--text-tokens", "64", "--strategy", "nope"], "unknown strategy"),
    (["--geometry", "llava-1.5-7b", "--text-tokens", "64", "--strategy", "fastv", "--layer", "32"], "layer=32"),
    (["--geometry", "llava-1.5-7b", "--text-tokens", "64", "--strategy", "fastv", "--param", "ratio"], "NAME=VALUE"),
    (["--geometry", "llava-1.5-7b", "--text-tokens", "0"], "text tokens"),
])
def test_cost_bad_input_exits_2_with_one_line(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_cost_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "pruning", "cost", "--geometry", "nowhere", "--text-tokens", "8"],
                          cwd=ROOT, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: unknown geometry")
    proc = subprocess.run([sys.executable, "-m", "pruning", "cost", "--geometry", "llava-1.5-7b", "--text-tokens",
                           "512", "--strategy", "ivtp", "--keep", "64", "--convention", "ivtp", "--json"],
                          cwd=ROOT, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert close(json.loads(proc.stdout)["tflops"]["total"], 8.228)


@pytest.fixture(scope="module")
def deep_engine(tmp_path_factory):
    """The 'deep' toy: a ViT pruning point before the feature layer and LLM points at layers 3 and 6 for IVTP."""
    import torch
    from pruning.engine import Engine
    from pruning.model import load_model
    from pruning.toy import build_random_llava

    path = build_random_llava(tmp_path_factory.mktemp("deep") / "deep", "deep", seed=1)
    torch.manual_seed(0)
    return path, Engine(load_model(str(path), device="cpu"))


@pytest.mark.parametrize("params", [{"keep": 8}, {"keep": 20, "vit": False}, {"keep": 5, "llm": False}, {}])
def test_ivtp_schedule_is_what_the_engine_runs(deep_engine, images, params):
    path, engine = deep_engine
    strategy = get_strategy("ivtp", **params)
    result = engine.run(images[2], QUESTIONS[2], strategy, max_new_tokens=1, warmup=0)
    text = result.tokens_per_layer[0] - result.image_tokens_per_layer[0]
    e = cost.estimate(load_geometry(str(path)), text, strategy=strategy)
    assert e["tokens"]["vit_per_layer"] == result.vit_tokens_per_layer
    assert e["tokens"]["visual_per_layer"] == result.image_tokens_per_layer
    assert e["tflops"]["vit"] == pytest.approx(result.tflops["vision"], rel=1e-12)
    assert e["tflops"]["total"] - e["tflops"]["vit"] == pytest.approx(result.tflops["prefill"], rel=1e-9)
    if params.get("keep") and params.get("vit", True):
        assert len(set(result.vit_tokens_per_layer)) > 1  # the ViT really pruned


def test_ivtp_without_keep_prunes_nothing_and_needs_the_grid_to_prune():
    e = cost.estimate(G7, 64, visual_tokens=1000, strategy=get_strategy("ivtp"))
    assert e["tokens"]["visual_per_layer"] == [1000] * 32 and e["ratio"] == 1
    with pytest.raises(ValueError, match="must be 576"):
        cost.estimate(G7, 64, visual_tokens=1000, strategy=get_strategy("ivtp", keep=64))
