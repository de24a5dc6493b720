"""CDPruner, DivPrune and DART (issue 25): each rule on tensors small enough to work out by hand, then through the
engine on the embedded model and on a random-init LLaVA-1.5 geometry, the CLI and the app's controls."""

import json
import math

import pytest
import torch

from pruning.strategies import LLMContext, Strategy, VisionContext, get_strategy
from pruning.strategies.base import QuestionEmbeddings
from pruning.strategies.cdpruner import conditional_kernel, dpp_greedy, relevance
from pruning.strategies.dart import dart_select
from pruning.strategies.divprune import cosine_distance, max_min_select

from .conftest import QUESTIONS

NEW = ["cdpruner", "divprune", "dart"]


def vision(n, projected=None, question=None):
    return VisionContext(patch_features=torch.zeros(n, 2), cls_attention=None, cls_feature=None, rows=1, cols=n,
                         generator=torch.Generator().manual_seed(0), projected=projected, question=question)


def unit(*degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


# ------------------------------------------------------------------------------------------------ DivPrune
def test_divprune_max_min_by_hand():
    # five projected features at angles 0, 5.71 (= (1, .1)), 90, 180 and 45 degrees; distance 1 - cos
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.7, 0.7]])
    # nearest other patch: 0 and 1 each other (0.005), 2 -> 4 (0.293), 3 -> 2 (1.0), 4 -> 1 (0.226): first pick 3
    # distance to {3}: 0 -> 2.0, 1 -> 1.995, 2 -> 1.0, 4 -> 1.707: pick 0
    # to the nearest of {3, 0}: 1 -> 0.005, 2 -> 1.0, 4 -> 0.293: pick 2; then 1 -> 0.005, 4 -> 0.293: pick 4
    assert max_min_select(cosine_distance(x), 4).tolist() == [3, 0, 2, 4]
    sel = get_strategy("divprune", keep=3).select_before_llm(vision(5, projected=x))
    assert sel.indices.tolist() == [0, 2, 3]  # spatial order; the near-duplicate 1 is never among them
    assert get_strategy("divprune").positions == "rearrange"  # the authors' contiguous ids


def test_divprune_never_picks_twice():
    # 0 and 1 are duplicates: after {2, 0} every score is 0 and the authors' argmax over all patches would return 0
    # again; here the picked ones are masked, so the third pick is 1
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert max_min_select(cosine_distance(x), 3).tolist() == [2, 0, 1]
    assert get_strategy("divprune", keep=5).select_before_llm(vision(3, projected=x)).indices.tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ CDPruner
def cd_question():
    # CLIP text embedding t = (1, 0); patch CLIP embeddings with cos to t of -1, -0.8, 0, 1, so the raw relevance
    # (minus the cosine) is 1, 0.8, 0, -1 and min-max normalised (r + 1 + 1e-6) / 2 = 1, 0.9, 0.5, 0
    patches = torch.tensor([[-1.0, 0.0], [-0.8, 0.6], [0.0, 1.0], [1.0, 0.0]])
    return QuestionEmbeddings(clip_text=torch.tensor([[1.0, 0.0]]), clip_patches=patches)


# projected features: 1 is close to 0 (cos .96), 2 is orthogonal to 0, 3 orthogonal to all
CD_X = torch.tensor([[1.0, 0.0, 0.0], [0.96, 0.28, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def test_cdpruner_relevance_and_kernel_by_hand():
    q = cd_question()
    r = relevance(q.clip_patches, q.clip_text)
    torch.testing.assert_close(r, torch.tensor([1.0, 0.9, 0.5, 0.0]) + 5e-7)
    kernel = conditional_kernel(CD_X, r)
    torch.testing.assert_close(kernel[0, 1], r[0] * 0.96 * r[1])  # r_i cos(x_i, x_j) r_j
    torch.testing.assert_close(kernel.diagonal(), r * r)
    # theta < 1: the relevance becomes exp(theta / (2 (1 - theta)) r), 0.5 -> exp(r / 2)
    torch.testing.assert_close(conditional_kernel(CD_X, r, 0.5).diagonal(), torch.exp(r / 2) ** 2)
    assert torch.equal(relevance(q.clip_patches[:1].repeat(3, 1), q.clip_text), torch.ones(3))  # max = min


def test_cdpruner_prefers_diverse_over_relevant():
    # gains r^2: 1, .81, .25, ~0 -> pick 0; then r_j^2 (1 - cos(x_0, x_j)^2): 1 -> .81 * (1 - .9216) = .0635,
    # 2 -> .25 * 1 = .25: pick 2, though 1 is more relevant (top-2 relevance would be {0, 1})
    c = vision(4, projected=CD_X, question=cd_question())
    sel = get_strategy("cdpruner", keep=2).select_before_llm(c)
    assert sel.indices.tolist() == [0, 2] and not sel.notes
    # x_1 lies in the plane of x_0 and x_2, so its gain is now 0, and 3's is r_3^2 ~ 2.5e-13: the kernel is spent and
    # the last picks go by relevance (1, then 3), where the authors' loop would take the root of a gain <= 0
    q = cd_question()
    assert dpp_greedy(conditional_kernel(CD_X, relevance(q.clip_patches, q.clip_text)), 4).tolist() == [0, 2, 1, 3]


def test_cdpruner_greedy_matches_determinant_greedy():
    # the incremental update picks, at each step, the token that maximises det(L_S) of the set so far
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, generator=g)
    kernel = conditional_kernel(x, torch.rand(7, generator=g) + 0.1).double()
    picks = []
    for _ in range(5):
        dets = [torch.det(kernel[picks + [j]][:, picks + [j]]) if j not in picks else -1 for j in range(7)]
        picks.append(int(torch.tensor(dets).argmax()))
    assert dpp_greedy(kernel, 5).tolist() == picks


def test_cdpruner_text_encoder_choice_and_note():
    llm_tokens = torch.tensor([[0.0, 0.0, 1.0]])  # the question in the LLM's space: relevance = -cos to x_3's axis
    no_clip = QuestionEmbeddings(llm_tokens=llm_tokens, clip_note="no CLIP text encoder: /m/clip does not exist")
    sel = get_strategy("cdpruner", keep=2).select_before_llm(vision(4, projected=CD_X, question=no_clip))
    # raw relevance -cos(x_j, (0, 0, 1)) = 0, 0, 0, -1 -> 1, 1, 1, ~0: pick 0, then 2 (orthogonal; 1 gains .0784)
    assert sel.indices.tolist() == [0, 2]
    assert sel.notes and "LLM's input embeddings" in sel.notes[0] and "does not exist" in sel.notes[0]
    with pytest.raises(ValueError, match="does not exist"):
        get_strategy("cdpruner", keep=2, text_encoder="clip").select_before_llm(vision(4, CD_X, no_clip))
    assert get_strategy("cdpruner", text_encoder="llm").question_inputs() == ("llm",)
    assert get_strategy("cdpruner").question_inputs() == ("clip", "llm")
    assert get_strategy("cdpruner").question_text("How many?\nAnswer the question using a single word or phrase.") \
        == "How many?"
    for bad in ({"text_encoder": "bert"}, {"theta": 1.5}):
        with pytest.raises(ValueError):
            get_strategy("cdpruner", **bad)


# ------------------------------------------------------------------------------------------------ DART
def dart_inputs():
    # rows: 0 system, 1..6 image, 7..8 text. Key L1 norms: image row 3 largest (pivot), text row 8 largest (pivot)
    keys = torch.tensor([[9.0], [1.0], [2.0], [5.0], [1.0], [3.0], [2.0], [1.0], [4.0]]).repeat(1, 2)
    # normed states as angles: image rows 1: 10, 2: 165, 3: 0 (pivot), 4: 100, 5: 60, 6: 185; text 8 (pivot): 90
    states = unit(0, 10, 165, 0, 100, 60, 185, 45, 90)
    return keys, states, torch.arange(1, 7), torch.arange(7, 9)


def test_dart_pivots_claim_least_similar_by_hand():
    keys, states, image_rows, text_rows = dart_inputs()
    # keep 3 = 1 image pivot (row 3) + 2 claimed, one per pivot. The authors visit list(set([3, 8])) = [8, 3]:
    # pivot 8 (90 deg) takes the least similar of rows 1, 2, 4, 5, 6: row 6 (cos 95 deg < 0); pivot 3 (0 deg) then
    # takes from 1, 2, 4, 5 the least similar: row 2 (cos 165 deg). Kept rows {2, 3, 6} = image positions 1, 2, 5.
    # (Visiting 3 first would give {1, 3, 6}: pivot 3 takes row 6, then pivot 8 row 1 at cos 80 deg.)
    assert list({3, 8}) == [8, 3]
    kept = dart_select(keys, states, image_rows, text_rows, 3, image_pivots=1, text_pivots=1)
    assert kept.tolist() == [1, 2, 5]
    ctx = LLMContext(layer=2, hidden_states=torch.zeros(9, 2), attention_row=None, image_rows=image_rows,
                     patch_indices=torch.arange(6), vision=vision(6), keys=keys, normed_states=states)
    dart = get_strategy("dart", keep=3, image_pivots=1, text_pivots=1)
    assert dart.select_in_llm(ctx).tolist() == [1, 2, 5]  # the text after the image: rows 7 and 8
    assert dart.stage == "llm" and dart.layer == 2 and dart.positions == "keep"


def test_dart_budget_is_the_count_kept():
    g = torch.Generator().manual_seed(0)
    s, m = 30, 20  # rows 0..1 system, 2..21 image, 22..29 text
    keys, states = torch.randn(s, 8, generator=g), torch.randn(s, 6, generator=g)
    image_rows, text_rows = torch.arange(2, 22), torch.arange(22, 30)
    top4 = set((keys[image_rows].abs().sum(-1).topk(4).indices).tolist())
    for keep in (0, 2, 4, 5, 12, 13, 19, 20, 25):
        kept = dart_select(keys, states, image_rows, text_rows, keep)
        assert len(kept) == min(keep, m) and kept.tolist() == sorted(set(kept.tolist()))
        if 4 <= keep < m:
            assert top4 <= set(kept.tolist())  # the 4 image pivots always stay
    ctx = LLMContext(layer=2, hidden_states=torch.zeros(s, 6), attention_row=None, image_rows=image_rows,
                     patch_indices=torch.arange(m), vision=vision(m), keys=keys, normed_states=states)
    assert len(get_strategy("dart").select_in_llm(ctx)) == round(20 * (1 - 0.778))  # no keep: their ratio
    with pytest.raises(ValueError, match="keys"):
        get_strategy("dart", keep=4).select_in_llm(LLMContext(layer=2, hidden_states=torch.zeros(s, 6),
                                                              attention_row=None, image_rows=image_rows,
                                                              patch_indices=torch.arange(m), vision=vision(m)))


class _KeysProbe(Strategy):
    name = "keys-probe-test"  # not registered: records what the engine hands a needs_keys strategy
    stages = ("llm",)
    needs_keys = True

    def select_in_llm(self, ctx):
        self.seen = ctx
        return None


def test_dart_keys_are_the_previous_layers_rotated_keys(engines, images):
    engine = engines("tiny")
    prepared = engine.prepare(images[0], QUESTIONS[0])
    captured = {}
    attn = engine.layers[1].self_attn
    hook = attn.register_forward_hook(lambda m, a, kw, o: captured.update(kw), with_kwargs=True)
    probe = _KeysProbe(stage="llm", layer=2)
    try:
        engine.prefill(prepared, engine.vision_pass(prepared), probe)
    finally:
        hook.remove()
    from pruning.engine import _attention_module_fns

    apply_rotary, _ = _attention_module_fns(attn)
    h = captured["hidden_states"]  # the normed input of layer 1's attention
    k = attn.k_proj(h).view(1, h.shape[1], -1, attn.head_dim).transpose(1, 2)
    cos, sin = captured["position_embeddings"]
    _, k = apply_rotary(k, k, cos, sin)
    torch.testing.assert_close(probe.seen.keys, k[0].transpose(0, 1).reshape(h.shape[1], -1))
    torch.testing.assert_close(probe.seen.normed_states, engine.norm(probe.seen.hidden_states))


# ------------------------------------------------------------------------------------------------ through the engine
@pytest.mark.parametrize("name", NEW)
def test_2025_on_576_token_model(engines, images, name):
    engine = engines("llava15")
    r = engine.run(images[0], QUESTIONS[0], get_strategy(name, keep=64), max_new_tokens=3, warmup=0)
    kept = r.kept_final
    assert len(kept) == 64 and kept == sorted(set(kept)) and all(0 <= i < 576 for i in kept)
    if name == "dart":
        assert r.image_tokens_per_layer == [576, 576] + [64] * 4 and r.notes == []
    else:
        assert r.image_tokens_per_layer == [64] * 6
    if name == "cdpruner":  # this toy has no clip/: the LLM's embeddings ran, and the note says so
        assert len(r.notes) == 1 and "LLM's input embeddings" in r.notes[0] and "no CLIP text encoder" in r.notes[0]
        with pytest.raises(ValueError, match="no CLIP text encoder"):
            engine.run(images[0], QUESTIONS[0], get_strategy(name, keep=64, text_encoder="clip"), max_new_tokens=1,
                       warmup=0)
    if name in ("cdpruner", "divprune"):  # the projector ran once on all 576 rows, and the estimate counts them
        from pruning import cost

        expected = (cost.projector_flops(engine.vision_shape, 576)
                    + cost.prefill_flops(engine.llm_shape, r.tokens_per_layer)) / 1e12
        assert r.tflops["prefill"] == pytest.approx(expected)


@pytest.mark.parametrize("name", NEW)
def test_2025_full_budget_reproduces_unpruned_answer(engines, images, name):
    engine = engines("llava15")
    ref = engine.run(images[1], QUESTIONS[1], get_strategy("none"), max_new_tokens=6, warmup=0)
    r = engine.run(images[1], QUESTIONS[1], get_strategy(name, keep=576), max_new_tokens=6, warmup=0)
    assert r.generated_tokens == ref.generated_tokens


def test_cdpruner_with_clip_on_576_token_model(tmp_path, images):
    from pruning.engine import Engine
    from pruning.model import load_model
    from pruning.toy import build_random_llava

    engine = Engine(load_model(str(build_random_llava(tmp_path / "m", "llava15", seed=1, with_clip=True)),
                               device="cpu"))
    prepared = engine.prepare(images[0], QUESTIONS[0])
    q = engine.question_embeddings(prepared, engine.vision_pass(prepared), ("clip", "llm"))
    assert q.clip_text.shape == (1, 32) and q.clip_patches.shape == (576, 32) and q.clip_note is None
    r = engine.run(images[0], QUESTIONS[0], get_strategy("cdpruner", keep=64), max_new_tokens=3, warmup=0)
    assert r.notes == [] and len(r.kept) == 64  # CLIP's text tower ran: no note
    llm = engine.run(images[0], QUESTIONS[0], get_strategy("cdpruner", keep=64, text_encoder="llm"),
                     max_new_tokens=3, warmup=0)
    assert llm.notes and llm.kept != r.kept


@pytest.mark.parametrize("name", NEW)
def test_2025_in_4bit(engines, images, name):
    engine = engines("tiny", four_bit=True)
    r = engine.run(images[0], QUESTIONS[0], get_strategy(name, keep=12), max_new_tokens=3, warmup=0)
    first = 2 if name == "dart" else 0  # dart drops before layer 2; the others before the LLM
    assert r.image_tokens_per_layer[first:] == [12] * (len(r.image_tokens_per_layer) - first)


_EMBEDDED = {}


def _embedded_engine():
    if "engine" not in _EMBEDDED:
        from pruning.engine import Engine
        from pruning.model import DEFAULT_MODEL_DIR, load_model

        _EMBEDDED["engine"] = Engine(load_model(str(DEFAULT_MODEL_DIR), device="cpu"))
    return _EMBEDDED["engine"]


@pytest.mark.parametrize("name", NEW)
def test_2025_on_the_embedded_model(name):
    from pruning.shapes import world

    engine = _embedded_engine()
    scene = world.make_scene(world.HELD_OUT_SEED + 3)
    r = engine.run(scene.image, "How many objects are there?", get_strategy(name, keep=36), max_new_tokens=3,
                   warmup=0)
    assert r.answer and r.visual_tokens == 144 and r.notes == []  # cdpruner: the shipped CLIP text tower ran
    assert r.image_tokens_per_layer[-1] == 36 and len(r.kept_final) == 36


def test_2025_cli(capsys):
    from pruning.cli import main

    argv = ["ask", "--image", "assets/examples/scene.png", "--question", "How many objects are there?",
            "--max-new-tokens", "2", "--json"]
    assert main(argv + ["--strategy", "cdpruner", "--keep", "36", "--param", "text_encoder=llm",
                        "--param", "theta=0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["text_encoder"] == "llm" and out["params"]["theta"] == 0.5 and len(out["kept"]) == 36
    assert any("LLM's input embeddings" in n for n in out["notes"])
    assert main(argv + ["--strategy", "divprune", "--keep", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["visual_tokens_kept"] == 20
    assert main(argv + ["--strategy", "dart", "--keep", "20", "--layer", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["image_tokens_per_layer"][:3] == [144] * 3 and out["image_tokens_per_layer"][3:] == [20] * 5


def test_2025_app_controls():
    from pruning.compare import strategy_controls

    controls = strategy_controls()
    cd = {c["name"]: c for c in controls["cdpruner"]}
    assert cd["text_encoder"]["choices"] == ["auto", "clip", "llm"] and cd["text_encoder"]["default"] == "auto"
    assert cd["theta"]["kind"] == "float" and cd["theta"]["default"] == 1.0
    assert cd["positions"]["default"] == "rearrange" and "layer" not in cd and "seed" not in cd
    assert {c["name"]: c["default"] for c in controls["divprune"]} == {"positions": "rearrange"}
    dart = {c["name"]: c["default"] for c in controls["dart"]}
    assert dart == {"layer": 2, "positions": "keep", "reduction_ratio": 0.778, "image_pivots": 4, "text_pivots": 4}


def test_2025_cost_estimate():
    from pruning import cost
    from pruning.geometries import load_geometry

    g = load_geometry("llava-1.5-7b")
    for name in ("cdpruner", "divprune"):  # the projector runs on all 576 patches, 64 enter the LLM
        s = cost.token_schedule(get_strategy(name, keep=64), g, 576, 60)
        assert s.projected == 576 and s.visual == [64] * 32
    s = cost.token_schedule(get_strategy("dart", keep=64), g, 576, 60)
    assert s.projected == 576 and s.visual == [576] * 2 + [64] * 30
    assert cost.token_schedule(get_strategy("dart"), g, 576, 60).visual[-1] == 128  # their ratio 0.778


def test_cdpruner_clip_text_depends_on_the_question():
    # the embedded CLIP's tokenizer adds no </s>, where CLIP pools: without it every question embedded alike
    from pruning.shapes import world

    engine = _embedded_engine()
    scene = world.make_scene(world.HELD_OUT_SEED + 3)
    texts, kept = [], []
    for question in ("How many objects are there?", "What colour is the circle?"):
        prepared = engine.prepare(scene.image, question)
        vision = engine.vision_pass(prepared)
        texts.append(engine.question_embeddings(prepared, vision, ("clip",)).clip_text)
        kept.append(engine.prefill(prepared, vision, get_strategy("cdpruner", keep=36)).kept_final)
    assert not torch.allclose(texts[0], texts[1], atol=1e-3) and kept[0] != kept[1]


@pytest.mark.parametrize("name", NEW + ["visionzip", "vispruner"])
def test_2025_lmms_eval_plugin(name):
    """lmms-eval's prunescope model: generate_until answers as the bench does, and loglikelihood, with the same
    strategy, scores that answer as what greedy decoding produces."""
    pytest.importorskip("lmms_eval")
    from lmms_eval.api.instance import Instance

    from pruning.bench import load_samples, sample_record
    from pruning.integrations.lmms_eval import PruneScopeLMM

    def instance(kind, arguments, i):
        return Instance(request_type=kind, arguments=arguments, idx=0,
                        metadata={"task": "t", "doc_id": i, "repeats": 1})

    questions = load_samples("shapes", 3)
    lm = PruneScopeLMM(threads=torch.get_num_threads(), strategy=name, keep=36)
    lm.task_dict = {"t": {"test": [{"image": q.image} for q in questions]}}
    expected = [sample_record(_embedded_engine(), q, get_strategy(name, keep=36))["answer"] for q in questions]
    gen = lm.generate_until([instance("generate_until", (q.question, {"max_new_tokens": 4}, lambda d: [d["image"]],
                                                         i, "t", "test"), i) for i, q in enumerate(questions)])
    assert [g.text if hasattr(g, "text") else g for g in gen] == expected
    scored = lm.loglikelihood([instance("loglikelihood", (q.question, f" {a}", lambda d: [d["image"]], i, "t",
                                                          "test"), i)
                               for i, (q, a) in enumerate(zip(questions, expected))])
    assert all(o.text[1] for o in scored)


def test_2025_compare_cards_and_sweep():
    """The app's Compare cards (with the parameters the app passes) and its Sweep, on the embedded model."""
    from pathlib import Path

    from pruning.compare import Scope

    scope = Scope(threads=torch.get_num_threads())
    image = str(Path(__file__).resolve().parents[1] / "assets" / "examples" / "scene.png")
    cards = scope.compare(image, "How many objects are there?", NEW, keep=36, repeats=1,
                          params={"cdpruner": {"text_encoder": "llm"}, "dart": {"layer": 3}})
    by = {c["strategy"]: c for c in cards}
    assert [c["strategy"] for c in cards] == ["none", *NEW]
    assert by["cdpruner"]["visual_tokens_kept"] == by["divprune"]["visual_tokens_kept"] == 36
    assert any("LLM's input embeddings" in n for n in by["cdpruner"]["notes"]) and by["divprune"]["notes"] == []
    assert by["dart"]["image_tokens_per_layer"] == [144] * 3 + [36] * 5 and by["dart"]["params"]["layer"] == 3
    rows = scope.sweep(NEW, [36], n=5, types=["colour"], progress=False)
    assert [r["label"] for r in rows] == ["none", *NEW]
