from edgevlm.data.scene_tokenizer import build_scene_tokenizer
from edgevlm.prompt import PromptConfig, Prompter, expand_image

import pytest

from edgevlm.errors import ConfigError


def test_single_tile_expansion():
    cfg = PromptConfig(image_seq_len=3)
    assert expand_image(cfg, 0, 0) == "<fake_token_around_image><global-img><image><image><image><fake_token_around_image>"


def test_split_expansion_follows_idefics3_layout():
    cfg = PromptConfig(image_seq_len=2)
    tile = "<image><image>"
    fake = "<fake_token_around_image>"
    expected = (f"{fake}<row_1_col_1>{tile}{fake}<row_1_col_2>{tile}\n"
                f"{fake}<row_2_col_1>{tile}{fake}<row_2_col_2>{tile}\n"
                f"\n{fake}<global-img>{tile}{fake}")
    assert expand_image(cfg, 2, 2) == expected


def test_encode_counts_image_tokens_and_decodes_words():
    prompter = Prompter(build_scene_tokenizer(), PromptConfig(image_seq_len=36))
    ids = prompter.encode(None)
    assert ids.count(prompter.image_token_id) == 36
    assert len(ids) == 36 + 4
    words = prompter.tokenizer.encode("a small red circle", add_special_tokens=False).ids
    assert prompter.decode(words + [1]) == "a small red circle"


def test_prompt_rejected_when_model_takes_none():
    prompter = Prompter(build_scene_tokenizer(), PromptConfig(image_seq_len=4))
    with pytest.raises(ConfigError, match="takes no text prompt"):
        prompter.encode("describe it")
