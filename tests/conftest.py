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


# The vLLM tier (`make test-vllm`): the real engine's CPU build, in-process, with a small KV cache (otherwise the
# CPU build sizes it from the machine's RAM, and takes half a minute to start).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")


def pytest_configure(config):
    config.addinivalue_line("markers", "vllm: runs the real vLLM engine (its CPU build): `make test-vllm`")
