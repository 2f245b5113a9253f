import os

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The offline world, built once per test session."""
    from rewatch_trl.tiny import build_tiny_world

    return build_tiny_world(tmp_path_factory.mktemp("tiny-world"), seed=0)


@pytest.fixture(scope="session")
def tiny_model_and_processor(tiny_world):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_world.root).eval()
    return model, AutoProcessor.from_pretrained(tiny_world.root)
