"""Engine behaviour beyond parity: sampling, tracing does not change answers, input checks."""

import pytest
import torch

from pruning.strategies import Selection, Strategy, get_strategy

from .conftest import QUESTIONS


def test_seeded_sampling_is_reproducible_and_top_p_tiny_is_greedy(engines, images):
    engine = engines("tiny")
    prepared = engine.prepare(images[0], QUESTIONS[0])
    vision = engine.vision_pass(prepared)
    s = get_strategy("none")

    def sample(**kw):
        return engine.decode(engine.prefill(prepared, vision, s), max_new_tokens=12, **kw)

    assert sample(temperature=1.5, seed=7) == sample(temperature=1.5, seed=7)
    draws = {tuple(sample(temperature=3.0, seed=seed)) for seed in range(4)}
    assert len(draws) > 1
    assert sample(temperature=1.0, top_p=1e-9) == sample()
    with pytest.raises(ValueError, match="top_p"):
        sample(temperature=1.0, top_p=0)


def test_trace_does_not_change_answer(engines, images):
    engine = engines("llava15")
    s = get_strategy("random", keep=100, stage="llm", layer=2)
    plain = engine.run(images[0], QUESTIONS[1], s, max_new_tokens=5, warmup=0)
    traced = engine.run(images[0], QUESTIONS[1], s, max_new_tokens=5, warmup=0, trace=True)
    assert plain.generated_tokens == traced.generated_tokens
    assert traced.trace["queries"] == len(traced.generated_tokens)
    late = traced.trace["patch_attention"][3]
    assert sum(1 for v in late if v > 0) == 100  # only the kept image tokens are attended after layer 2


def test_cls_attention_rows_match_eager_attentions(engines, images):
    """The hook-computed [CLS] rows equal the weights an eager ViT returns."""
    engine = engines("llava15", attn="eager")
    prepared = engine.prepare(images[0], QUESTIONS[0])
    ctx = engine.vision_pass(prepared)
    out = engine.vision_tower(prepared.pixel_values, output_attentions=True)
    expected = torch.stack([a[0, :, 0, 1:] for a in out.attentions])  # (L, H, N)
    torch.testing.assert_close(ctx.cls_attention, expected, atol=1e-5, rtol=1e-4)
    assert ctx.cls_attention.shape == (4, 2, 576)


def test_last_token_attention_row_matches_eager(engines, images):
    """The in-LLM attention row handed to strategies equals eager attention weights at layer k-1."""
    engine = engines("llava15", attn="eager")
    seen = {}

    class Probe(Strategy):
        name = "probe-test"
        stages = ("llm",)
        needs_attention_row = True

        def select_in_llm(self, ctx):
            seen["row"] = ctx.attention_row
            return None

    prepared = engine.prepare(images[1], QUESTIONS[0])
    engine.prefill(prepared, engine.vision_pass(prepared), Probe(stage="llm", layer=3))
    inputs = engine.lm.processor(images=images[1], text=engine.lm.prompt(QUESTIONS[0]), return_tensors="pt")
    with torch.no_grad():
        attentions = engine.model(**inputs, output_attentions=True).attentions
    torch.testing.assert_close(seen["row"], attentions[2][0, :, -1], atol=1e-5, rtol=1e-4)


def test_merged_features_enter_the_llm(engines, images):
    """A Selection with features (a merging strategy) puts exactly those vectors into the LLM."""
    engine = engines("tiny")

    class MeanOfAll(Strategy):
        name = "mean-test"

        def select_before_llm(self, ctx):
            return Selection(torch.tensor([0]), features=ctx.patch_features.mean(0, keepdim=True))

    result = engine.run(images[0], QUESTIONS[0], MeanOfAll(), max_new_tokens=3, warmup=0)
    assert result.visual_tokens_kept == 1 and result.kept == [0]


@pytest.mark.parametrize("indices,match", [([3, 1], "ascending"), ([0, 99], "outside"), ([[0]], "1-D")])
def test_bad_strategy_output_is_reported(engines, images, indices, match):
    engine = engines("tiny")

    class Bad(Strategy):
        name = "bad-test"

        def select_before_llm(self, ctx):
            return Selection(torch.tensor(indices))

    with pytest.raises(ValueError, match=match):
        engine.run(images[0], QUESTIONS[0], Bad(), max_new_tokens=2, warmup=0)


def test_image_must_be_pil(engines):
    with pytest.raises(ValueError, match="PIL"):
        engines("tiny").prepare("not an image", "q")
