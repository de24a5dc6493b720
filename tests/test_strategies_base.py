"""Strategy registry and the two engine-testing strategies (none, random)."""

from dataclasses import dataclass

import pytest
import torch

from pruning.strategies import LLMContext, Strategy, VisionContext, available, get_strategy, register


def vision_ctx(n=36, seed=0):
    return VisionContext(patch_features=torch.randn(n, 8), cls_attention=None, cls_feature=None, rows=6, cols=6,
                         generator=torch.Generator().manual_seed(seed))


def test_registry_lists_and_refuses_duplicates():
    assert {"none", "random"} <= set(available())

    with pytest.raises(ValueError, match="already registered"):
        @register
        @dataclass
        class Another(Strategy):
            name = "random"


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_strategy("nope")
    assert "nope" in str(err.value) and "none" in str(err.value) and "random" in str(err.value)


@pytest.mark.parametrize("bad,match", [({"positions": "shuffle"}, "positions"), ({"stage": "after"}, "stage"),
                                       ({"keep": -1}, "keep"), ({"layer": 0}, "layer"), ({"colour": 1}, "colour")])
def test_invalid_parameters_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        get_strategy("random", **bad)


def test_none_has_no_llm_stage():
    with pytest.raises(ValueError, match="none stage='llm': expected a stage this strategy has: 'before'"):
        get_strategy("none", stage="llm")


@pytest.mark.parametrize("keep", [0, 1, 7, 36, 50])
def test_random_before_llm_counts_order_and_seed(keep):
    s = get_strategy("random", keep=keep, seed=4)
    a, b = s.select_before_llm(vision_ctx(seed=4)), s.select_before_llm(vision_ctx(seed=4))
    idx = a.indices
    assert len(idx) == min(keep, 36)
    assert torch.equal(idx, b.indices)  # same seed, same subset
    assert len(set(idx.tolist())) == len(idx) and all(0 <= i < 36 for i in idx.tolist())
    assert idx.tolist() == sorted(idx.tolist())  # spatial order


def test_random_differs_across_seeds():
    s = get_strategy("random", keep=10)
    subsets = {tuple(s.select_before_llm(vision_ctx(seed=seed)).indices.tolist()) for seed in range(5)}
    assert len(subsets) > 1


def test_random_in_llm_picks_among_image_rows():
    s = get_strategy("random", keep=5, stage="llm", layer=2, seed=1)
    ctx = LLMContext(layer=2, hidden_states=torch.randn(50, 8), attention_row=None,
                     image_rows=torch.arange(10, 46), patch_indices=torch.arange(36), vision=vision_ctx(seed=1))
    keep = s.select_in_llm(ctx)
    assert len(keep) == 5 and int(keep.max()) < 36 and keep.tolist() == sorted(set(keep.tolist()))


def test_params_are_plain_values():
    assert get_strategy("random", keep=3, stage="llm", layer=4, positions="rearrange", seed=9).params() == {
        "keep": 3, "stage": "llm", "layer": 4, "positions": "rearrange", "seed": 9}
