"""FLOPs estimates against torch's FlopCounterMode; KV-cache bytes against the cache's tensors."""

import pytest
from pruning import cost
from pruning.strategies import get_strategy

from .conftest import QUESTIONS

CASES = [("none", {}), ("random", {"keep": 64}), ("random", {"keep": 100, "stage": "llm", "layer": 2}),
         ("random", {"keep": 0, "stage": "llm", "layer": 3})]


def within(estimate, measured, rel=0.10):
    return abs(estimate - measured) <= rel * measured


@pytest.mark.parametrize("name,params", CASES)
def test_flops_estimate_agrees_with_flop_counter(engines, images, name, params):
    # FlopCounterMode does not count torch's CPU SDPA kernel (it reports only the projections), so the
    # count runs on the eager-attention load of the same checkpoint, where attention is plain matmuls.
    engine = engines("llava15", attn="eager")
    rows = cost.flop_check(engine, images[0], QUESTIONS[0], get_strategy(name, **params))
    assert [r[0] for r in rows] == ["vision", "prefill", "decode"]
    for stage, estimate, counted in rows:
        assert within(estimate, counted), (stage, estimate, counted)


def test_pruning_reduces_estimated_flops(engines, images):
    engine = engines("llava15")
    full = engine.run(images[0], QUESTIONS[0], get_strategy("none"), max_new_tokens=3, warmup=0)
    pruned = engine.run(images[0], QUESTIONS[0], get_strategy("random", keep=64), max_new_tokens=3, warmup=0)
    assert pruned.tflops["prefill"] < 0.5 * full.tflops["prefill"]
    assert pruned.tflops["vision"] == full.tflops["vision"]  # the ViT always sees every patch


@pytest.mark.parametrize("four_bit", [False, True], ids=["fp32", "4bit"])
@pytest.mark.parametrize("name,params", CASES)
def test_kv_cache_bytes_match_formula(engines, images, name, params, four_bit):
    engine = engines("llava15", four_bit)
    result = engine.run(images[1], QUESTIONS[1], get_strategy(name, **params), max_new_tokens=4, warmup=0)
    steps = len(result.generated_tokens) - 1  # tokens fed back through the layers
    lengths = [n + steps for n in result.tokens_per_layer]
    expected = cost.kv_cache_bytes_estimate(engine.llm_shape, lengths, bytes_per_value=4)  # fp32 cache on CPU
    assert result.kv_cache_bytes_per_layer == expected
    assert result.kv_cache_bytes == sum(expected)


def test_in_llm_drop_shrinks_only_later_layers(engines, images):
    engine = engines("llava15")
    result = engine.run(images[0], QUESTIONS[0], get_strategy("random", keep=0, stage="llm", layer=3),
                        max_new_tokens=2, warmup=0)
    per_layer = result.kv_cache_bytes_per_layer
    assert per_layer[0] == per_layer[1] == per_layer[2] > per_layer[3] == per_layer[5]
    assert result.image_tokens_per_layer == [576, 576, 576, 0, 0, 0]


def test_repeat_timed_takes_median_and_validates():
    calls = iter([({"ms": 100.0}, "warm"), ({"ms": 3.0}, "a"), ({"ms": 1.0}, "b"), ({"ms": 2.0}, "c")])
    timings, value = cost.repeat_timed(lambda: next(calls), repeats=3, warmup=1)
    assert timings == {"ms": 2.0} and value == "c"
    with pytest.raises(ValueError, match="repeats"):
        cost.repeat_timed(lambda: ({}, None), repeats=0)


def test_layer_flops_formula_hand_computed():
    s = cost.LLMShape(hidden=4, heads=2, kv_heads=1, head_dim=2, intermediate=8, vocab=10, layers=1)
    # q 2*3*4*4 = 96, k and v 2*3*4*2 each = 96, o 2*3*4*4 = 96; scores + weighted sum 2*2*3*5*2*2 = 240;
    # gated MLP 3 matrices of 4x8: 2*3*4*8*3 = 576
    assert cost.llm_layer_flops(s, 3, 5) == 96 + 96 + 96 + 240 + 576
    assert cost.decode_token_flops(s, [5, 7]) == cost.llm_layer_flops(s, 1, 5) + cost.llm_layer_flops(s, 1, 7) + 80
