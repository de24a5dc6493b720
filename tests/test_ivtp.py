"""IVTP: rollout and scores by hand, the schedule, the pseudo-[CLS] rule, and both stages end to end."""

from dataclasses import dataclass

import pytest
import torch

from pruning.engine import Engine
from pruning.model import load_model
from pruning.strategies import Strategy, get_strategy
from pruning.strategies.ivtp import group_scores, rollout
from pruning.toy import build_random_llava

from .conftest import QUESTIONS


def test_rollout_with_residual_hand_computed():
    a1 = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    a2 = torch.tensor([[1.0, 0.0], [0.4, 0.6]])
    # (a2 + I) row-normalised = [[1, 0], [0.2, 0.8]]; times a1 = [[0.5, 0.5], [0.26, 0.74]]
    torch.testing.assert_close(rollout([a1, a2]), torch.tensor([[0.5, 0.5], [0.26, 0.74]]))
    torch.testing.assert_close(rollout([a1]), a1)


def test_scores_weight_rollout_by_value_norms():
    att = [torch.tensor([[0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])]
    s = group_scores(att, 0, torch.tensor([2.0, 1.0]), slice(1, None))  # [CLS] row over tokens 1, 2
    torch.testing.assert_close(s, torch.tensor([0.6, 0.5]) / 1.1)


def test_pseudo_cls_threshold_and_fallback():
    s = get_strategy("ivtp", keep=8, tau=0.2)
    rows = torch.tensor([10, 11, 12])
    assert s.pseudo_rows(torch.tensor([0.1, 0.25, 0.2]), rows).tolist() == [11, 12]
    assert s.pseudo_rows(torch.tensor([0.1, 0.0, 0.19]), rows) is None  # none relevant: visual [CLS]
    assert s.pseudo_rows(None, rows) is None  # no text encoder


def test_schedule_points_for_llava15_depths():
    s = get_strategy("ivtp", keep=64)
    assert s.vit_prune_layers(24, 22) == [2, 5, 8, 11, 14, 17, 20]  # groups of 3 before the feature layer
    assert s.llm_drop_layers(32) == [3, 6, 9, 12]  # the first 12 of 32 layers
    targets = [s._target(576, i, 11) for i in range(11)]
    assert targets[-1] == 64 and targets == sorted(targets, reverse=True)
    assert get_strategy("ivtp").vit_prune_layers(24, 22) == []  # no budget: nothing to prune


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    return Engine(load_model(str(build_random_llava(tmp_path_factory.mktemp("deep") / "m", "deep", with_clip=True)),
                             device="cpu"))


def test_both_stages_end_to_end(deep, images):
    r = deep.run(images[0], QUESTIONS[0], get_strategy("ivtp", keep=16), max_new_tokens=3, warmup=0)
    assert r.vit_tokens_per_layer == [65] * 3 + [41] * 4  # pruned after ViT layer 2 (64 -> 40 patches)
    assert r.visual_tokens_kept == 40
    assert r.image_tokens_per_layer == [40] * 3 + [25] * 3 + [16] * 10
    assert len(r.kept_final) == 16 and set(r.kept_final) <= set(r.kept) and r.notes == []
    only_llm = deep.run(images[0], QUESTIONS[0], get_strategy("ivtp", keep=16, vit=False), max_new_tokens=3, warmup=0)
    assert only_llm.vit_tokens_per_layer == [65] * 7 and only_llm.image_tokens_per_layer[-1] == 16
    assert r.tflops["vision"] < only_llm.tflops["vision"]


def test_text_relevance_covers_question_tokens_only(deep, images):
    prepared = deep.prepare(images[0], QUESTIONS[1])
    relevance, question_index, note = deep.text_relevance(prepared, deep.vision_pass(prepared))
    assert note is None
    finite = (~torch.isnan(relevance)).nonzero().flatten()
    assert finite.tolist() == question_index.tolist() and len(finite) >= 4
    assert bool((relevance[finite].abs() <= 1).all())
    a, n = prepared.image_start, prepared.n_image
    assert int(finite.min()) >= a + n  # question text comes after the image


def test_pseudo_query_is_what_scores_the_image(deep, images):
    """The scoring row differs between 'every question token is relevant' and 'none is' (visual [CLS])."""
    from pruning.strategies.ivtp import IVTP

    seen = {}

    @dataclass
    class Recording(IVTP):
        name = "ivtp-recording-test"

        def select_in_llm(self, ctx):
            seen.setdefault(self.tau, ctx.group[-1][0][-1].clone())  # pseudo-[CLS] row, first drop point
            return super().select_in_llm(ctx)

    prepared = deep.prepare(images[1], QUESTIONS[2])
    for tau in (-2.0, 2.0):  # beyond any cosine: every token relevant / none (set past tau's [0, 1] check)
        s = Recording(keep=16, vit=False)
        s.tau = tau
        deep.prefill(prepared, deep.vision_pass(prepared, strategy=s), s)
    assert seen[-2.0].shape == seen[2.0].shape
    torch.testing.assert_close(seen[-2.0].sum(), torch.tensor(1.0))
    assert not torch.allclose(seen[-2.0], seen[2.0], atol=1e-6)


def test_without_text_encoder_falls_back_and_says_so(engines, images):
    r = engines("llava15").run(images[0], QUESTIONS[0], get_strategy("ivtp", keep=64), max_new_tokens=2, warmup=0)
    assert r.image_tokens_per_layer[-1] == 64
    assert r.notes and "no CLIP text encoder" in r.notes[0] and "visual [CLS]" in r.notes[0]


def test_layerwise_vit_pass_equals_the_towers_forward(deep, images):
    """With a pruning point that keeps everything, the layer-by-layer ViT gives transformers' features."""

    @dataclass
    class KeepAll(Strategy):
        name = "keep-all-vit-test"

        def vit_prune_layers(self, n, feature_layer):
            return [1]

        def select_in_vit(self, ctx):
            return torch.arange(ctx.attentions[-1].shape[0] - 1)

    prepared = deep.prepare(images[0], QUESTIONS[0])
    plain = deep.vision_pass(prepared)
    layered = deep.vision_pass(prepared, strategy=KeepAll())
    torch.testing.assert_close(layered.patch_features, plain.patch_features, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(layered.cls_final, plain.cls_final, atol=1e-5, rtol=1e-4)
    assert layered.patch_ids.tolist() == list(range(64))
