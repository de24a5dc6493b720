"""Shared fixtures: random-init LLaVA checkpoints built on disk once per session, offline."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image

from pruning.engine import Engine
from pruning.model import load_model
from pruning.toy import build_random_llava

QUESTIONS = ["what is the colour of the circle?", "how many objects are there?", "is there a red square?"]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {name: build_random_llava(root / name, name, seed=1) for name in ("tiny", "llava15")}


@pytest.fixture(scope="session")
def images():
    rng = np.random.RandomState(0)
    return [Image.fromarray(rng.randint(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in [(64, 80), (100, 60), (48, 48)]]


_cache = {}


def get_engine(model_dirs, name, four_bit=False, attn="sdpa"):
    key = (name, four_bit, attn)
    if key not in _cache:
        torch.manual_seed(0)
        _cache[key] = Engine(load_model(str(model_dirs[name]), load_in_4bit=four_bit, device="cpu",
                                        attn_implementation=attn))
    return _cache[key]


@pytest.fixture(scope="session")
def engines(model_dirs):
    return lambda name, four_bit=False, attn="sdpa": get_engine(model_dirs, name, four_bit, attn)
