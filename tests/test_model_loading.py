"""pruning.model: local directories, errors that name the problem, geometry, prompts, 4-bit."""

import json
import shutil

import pytest

from pruning.model import DEFAULT_PROMPT, ModelLoadError, build_prompt, load_model


def test_llava15_geometry(engines):
    g = engines("llava15").geometry
    assert (g.image_size, g.patch_size, g.rows, g.cols, g.n_patches) == (336, 14, 24, 24, 576)
    assert g.has_cls and g.vision_feature_layer == -2 and g.select_strategy == "default"
    assert g.feature_layer_index == g.vision_layers - 2  # the penultimate ViT layer


def test_four_bit_linear_layers(engines):
    import bitsandbytes as bnb

    lm = engines("tiny", four_bit=True).lm
    assert lm.load_in_4bit
    layer = lm.model.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_state.quant_type == "nf4"


def test_chat_template_and_fallback(engines):
    processor = engines("tiny").lm.processor
    assert build_prompt(processor, "what?") == "USER: <image>\nwhat? ASSISTANT:"
    processor_without = type("P", (), {"chat_template": None})()
    assert build_prompt(processor_without, "what?") == DEFAULT_PROMPT.format(question="what?")
    with pytest.raises(ValueError, match="empty"):
        build_prompt(processor, "   ")


def test_missing_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="not a directory"):
        load_model(str(tmp_path / "absent"))


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_not_a_llava_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="not a LLaVA config"):
        load_model(str(tmp_path))


def test_no_safetensors(model_dirs, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(model_dirs["tiny"], target)
    for f in target.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        load_model(str(target))


def test_bad_hub_id_and_device():
    with pytest.raises(ModelLoadError, match="hub id"):
        load_model("not-a-path-nor-id")
    with pytest.raises(ModelLoadError, match="device"):
        load_model("owner/name", device="tpu")
