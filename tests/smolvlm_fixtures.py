"""Random SmolVLM / Idefics3 checkpoints written with transformers' save_pretrained (no downloads).

transformers is the oracle: the checkpoint directory is what a user would have on disk, and
the returned transformers model and processor give the reference ids, pixels, logits and
tokens. SmolVLMProcessor needs a video processor (torchvision) and num2words, so the oracle
processor is Idefics3Processor for both model types: its prompt expansion is the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SMOLVLM_TEMPLATE = (  # SmolVLM-256M-Instruct's chat template
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_TEMPLATE = (  # Idefics3-8B-Llama3's: starts with BOS, .capitalize() method call
    "<|begin_of_text|>{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
CORPUS = [
    "User: Can you describe this image? Assistant: A cat sits on a red mat near the window.",
    "A photo of two dogs running on the beach at sunset, with waves and clouds.",
    "What is in the picture? There is a small house, a tree and a blue car.",
]


def build_tokenizer(bos: str | None = None) -> Tokenizer:
    """Byte-level BPE with every special token the Idefics3/SmolVLM processor uses; with `bos`,
    a post-processor that prepends it (as Llama-3 tokenizers do)."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                "<global-img>", "<end_of_utterance>"] + [f"<row_{i}_col_{j}>" for i in range(1, 5) for j in range(1, 5)]
    specials += [bos] if bos else []
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


@dataclass
class Checkpoint:
    path: Path
    model: object  # transformers *ForConditionalGeneration, fp32, eval
    processor: object  # transformers Idefics3Processor
    bos: str | None


TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024)
KINDS = {
    # smolvlm: tied, fp32, one safetensors file, patch grid 4x4, scale 2
    "smolvlm": dict(model_type="smolvlm", vision=dict(TINY_VISION, image_size=32, patch_size=8), scale=2,
                    text=dict(TINY_TEXT, rope_theta=100000.0), vocab_size=None, longest_edge=128, tie=True,
                    dtype=torch.float32, shard=None, bos=None, template=SMOLVLM_TEMPLATE, std=0.3),
    # idefics3: untied, bf16, sharded, 6x6 grid, scale 3, BOS post-processor + BOS in the template
    "idefics3": dict(model_type="idefics3", vision=dict(TINY_VISION, image_size=24, patch_size=4), scale=3,
                     text=dict(TINY_TEXT, rope_theta=10000.0), vocab_size=None, longest_edge=96, tie=False,
                     dtype=torch.bfloat16, shard="60KB", bos="<|begin_of_text|>", template=IDEFICS3_TEMPLATE,
                     std=0.3),
    # SmolVLM-256M-Instruct's shape (an idefics3 checkpoint): SigLIP-B/16 @ 512, scale 4 -> 64 tokens
    # per tile; SmolLM2-135M text (576 wide, 30 layers, 9 / 3 heads); tied; bf16 in two shards
    "smolvlm-256m": dict(model_type="idefics3", scale=4, longest_edge=2048, tie=True, dtype=torch.bfloat16,
                         shard="300MB", bos=None, template=SMOLVLM_TEMPLATE, vocab_size=49280, std=0.05,
                         vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                     num_attention_heads=12, image_size=512, patch_size=16),
                         text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                                   rope_theta=100000.0)),
}


def randomize(model, std: float, seed: int) -> None:
    """Re-draw every parameter (norm weights around 1, biases and matrices around 0) so that a
    wrong mapping of any tensor shows, and greedy decoding visits many different tokens."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim >= 2:
                p.copy_(noise * std)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def build_checkpoint(out: Path, kind: str = "smolvlm", seed: int = 0, std: float | None = None) -> Checkpoint:
    """A random checkpoint directory of `kind` (see KINDS), and the transformers oracle for it."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers import PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    spec = KINDS[kind]
    out = Path(out)
    tok = build_tokenizer(spec["bos"])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    special = dict(bos_token=spec["bos"] or "<|im_start|>", eos_token="<end_of_utterance>",
                   pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    hf_tok = PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"), **special)
    text = dict(model_type="llama", vocab_size=spec["vocab_size"] or tok.get_vocab_size() + 8, rms_norm_eps=1e-5,
                eos_token_id=tok.token_to_id("<|im_end|>"), bos_token_id=tok.token_to_id(special["bos_token"]),
                **spec["text"])
    smol = spec["model_type"] == "smolvlm"
    config_cls, model_cls, image_cls = ((SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil)
                                        if smol else
                                        (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil))
    config = config_cls(vision_config=spec["vision"], text_config=text, scale_factor=spec["scale"],
                        image_token_id=tok.token_to_id("<image>"), tie_word_embeddings=spec["tie"])
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    randomize(model, spec["std"] if std is None else std, seed)
    save = dict(max_shard_size=spec["shard"]) if spec["shard"] else {}
    model.to(spec["dtype"]).save_pretrained(out, **save)
    model = model_cls.from_pretrained(out, dtype=torch.float32).eval()  # the oracle sees the stored precision
    image_processor = image_cls(do_resize=True, size={"longest_edge": spec["longest_edge"]},
                                max_image_size={"longest_edge": spec["vision"]["image_size"]}, resample=1,
                                do_image_splitting=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_seq_len = (spec["vision"]["image_size"] // spec["vision"]["patch_size"] // spec["scale"]) ** 2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=hf_tok, image_seq_len=image_seq_len,
                                  chat_template=spec["template"])
    processor.save_pretrained(out)
    return Checkpoint(out, model, processor, spec["bos"])


def reference_inputs(ckpt: Checkpoint, image: Image.Image, prompt: str, split: bool = True) -> dict:
    """input_ids [1, S], pixel_values [1, tiles, 3, H, W], pixel_attention_mask from the
    transformers processor, via its own chat-template path (apply_chat_template tokenize=True)."""
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}]
    return ckpt.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                              return_tensors="pt", processor_kwargs={"do_image_splitting": split})


def random_photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth random colour fields plus noise: closer to a photo than white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack([np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 6)) + np.cos(yy * rng.uniform(2, 9))
                     for _ in range(3)], -1)
    pixels = (base - base.min()) / (np.ptp(base) + 1e-9) * 200 + rng.integers(0, 56, (height, width, 3))
    return Image.fromarray(pixels.astype(np.uint8))
