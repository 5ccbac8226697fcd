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


def tiny_scene_setup():
    """A tiny random model wired to the real scene tokenizer, prompt and preprocessing."""
    import torch

    from edgevlm.data.scene_tokenizer import build_scene_tokenizer
    from edgevlm.image import PreprocessConfig
    from edgevlm.models.vlm import VLM
    from edgevlm.prompt import PromptConfig
    from edgevlm.runtime.generate import GenerationConfig

    tokenizer = build_scene_tokenizer()
    text = tiny_config().text.replace(vocab_size=tokenizer.get_vocab_size(), tie_word_embeddings=False)
    cfg = tiny_config().replace(text=text)
    torch.manual_seed(0)
    model = VLM(cfg).eval()
    # Re-draw the matrices with std 0.3 so random greedy decoding visits many different
    # tokens (with the std-0.02 training init every position predicts the same token).
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.3)
    pre = PreprocessConfig(tile_size=32, longest_edge=32)
    prompt = PromptConfig(image_seq_len=cfg.image_seq_len)
    gen = GenerationConfig(max_new_tokens=12, eos_token_ids=(tokenizer.token_to_id("<|endoftext|>"),))
    special = {"eos": list(gen.eos_token_ids), "pad": 0, "image": cfg.image_token_id}
    return model, tokenizer, pre, prompt, gen, special


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """(bundle path, torch model, preprocess config): a tiny random model exported once per session."""
    from edgevlm.export.to_onnx import export_bundle

    model, tokenizer, pre, prompt, gen, special = tiny_scene_setup()
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(model, tokenizer, out, preprocess=pre.to_dict(), prompt=prompt.to_dict(), special_tokens=special,
                  generation=gen.to_dict(), progress=False)
    return out, model, pre


def cpu_has(*flags: str) -> bool:
    """Whether /proc/cpuinfo lists every one of `flags` (False where it cannot be read)."""
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return all(f" {flag}" in text for flag in flags)
