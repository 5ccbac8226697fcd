"""Shared fixtures: tiny random models built in the tests (no downloads)."""

import pytest

from edgevlm.config import TextConfig, VisionConfig, VLMConfig


def tiny_config() -> VLMConfig:
    return VLMConfig(
        vision=VisionConfig(image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
        text=TextConfig(vocab_size=64, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                        intermediate_size=96, max_position_embeddings=64),
        image_token_id=2,
    )


@pytest.fixture
def tiny_cfg():
    return tiny_config()
