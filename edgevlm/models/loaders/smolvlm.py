"""SmolVLM / Idefics3 checkpoints: a Hugging Face checkpoint directory, read as it is.

    checkpoint/
      config.json                    model_type "smolvlm" or "idefics3"; nested vision_config
                                     (SigLIP) and text_config (Llama); scale_factor; image_token_id
      model.safetensors              or model.safetensors.index.json + shards (bf16/fp16/fp32)
      tokenizer.json                 the `tokenizers` tokenizer (+ tokenizer_config.json: bos/eos/pad)
      chat_template.jinja | chat_template.json | tokenizer_config.json["chat_template"]
      preprocessor_config.json       image processor (or processor_config.json["image_processor"])
      processor_config.json          image_seq_len
      generation_config.json         eos_token_id (optional)

No transformers import: the weights map one-to-one onto edgevlm's native modules. The
chat template is rendered once, here, with jinja2 (an export-time dependency) for one user
turn [image, text] + generation prompt; the result is the bundle's fixed prompt template
(the runtime has no jinja). tests/test_smolvlm.py checks everything against transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer

from edgevlm import image_tiling
from edgevlm.config import ProjectorConfig, TextConfig, VisionConfig, VLMConfig
from edgevlm.errors import CheckpointError, ConfigError
from edgevlm.image import MAX_TILES_LIMIT, PreprocessConfig
from edgevlm.models.loaders.hf_files import (PROMPT_MARK, SafetensorsWeights, chat_template_source, load_checked,
                                             read_json, render_chat_template, token_text)
from edgevlm.models.registry import Loader, LoadedCheckpoint, register
from edgevlm.prompt import PromptConfig
from edgevlm.runtime.generate import MAX_NEW_TOKENS_CAP, GenerationConfig

MODEL_TYPES = ("smolvlm", "idefics3")
DEFAULT_PROMPT = "Can you describe this image?"
DEFAULT_MAX_NEW_TOKENS = 128
END_OF_UTTERANCE = "<end_of_utterance>"
_RESAMPLE = {1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL enum values used in preprocessor configs
# native parameter-name prefix -> checkpoint name prefix (after the "model." of *ForConditionalGeneration)
_NAME_MAP = (
    ("vision.encoder.position_embedding", "vision_model.embeddings.position_embedding.weight"),
    ("vision.encoder.patch_embedding.", "vision_model.embeddings.patch_embedding."),
    ("vision.encoder.layers.", "vision_model.encoder.layers."),
    ("vision.encoder.post_layernorm.", "vision_model.post_layernorm."),
    ("vision.projector.proj.", "connector.modality_projection.proj."),
    ("decoder.", "text_model."),
)


# --------------------------------------------------------------------------- config.json


def _field(d: dict, key: str, default, kind, where: str):
    """d[key] (or default) as `kind`: ints must be >= 1 (sizes and counts), floats > 0."""
    value = d.get(key, default)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = number and isinstance(value, int) and value >= 1
    else:
        ok, value = number and value > 0, float(value) if number else value
    if not ok:
        raise CheckpointError(f"config.json: {where}{key} = {value!r} is not a valid {kind.__name__}")
    return value


def _unsupported(what: str) -> CheckpointError:
    return CheckpointError(f"config.json: {what} is not supported (edgevlm maps SigLIP + Llama SmolVLM/Idefics3 only)")


def _vision_config(v: dict) -> VisionConfig:
    def get(key, default, kind=int):
        return _field(v, key, default, kind, "vision_config.")

    if v.get("hidden_act", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        raise _unsupported(f"vision_config.hidden_act {v.get('hidden_act')!r}")
    if v.get("num_channels", 3) != 3:
        raise _unsupported(f"vision_config.num_channels {v.get('num_channels')!r}")
    return VisionConfig(image_size=get("image_size", 224), patch_size=get("patch_size", 32),
                        hidden_size=get("hidden_size", 1152), num_layers=get("num_hidden_layers", 12),
                        num_heads=get("num_attention_heads", 16), intermediate_size=get("intermediate_size", 3072),
                        layer_norm_eps=get("layer_norm_eps", 1e-6, float))


def _rope_theta(t: dict) -> float:
    """rope_parameters (transformers >= 5) or the older rope_theta + rope_scaling; default RoPE only."""
    params = t.get("rope_parameters") or {}
    scaling = t.get("rope_scaling") or {}
    for source in (params, scaling):
        kind = source.get("rope_type", source.get("type", "default"))
        if kind != "default":
            raise _unsupported(f"text_config RoPE type {kind!r}")
    return _field({**t, **params}, "rope_theta", 10000.0, float, "text_config.")


def _text_config(t: dict, tie: bool) -> TextConfig:
    def get(key, default, kind=int):
        return _field(t, key, default, kind, "text_config.")

    if t.get("model_type", "llama") != "llama":
        raise _unsupported(f"text_config.model_type {t.get('model_type')!r}")
    if t.get("hidden_act", "silu") != "silu":
        raise _unsupported(f"text_config.hidden_act {t.get('hidden_act')!r}")
    for flag in ("attention_bias", "mlp_bias"):
        if t.get(flag, False):
            raise _unsupported(f"text_config.{flag}")
    hidden, heads = get("hidden_size", 4096), get("num_attention_heads", 32)
    if t.get("head_dim") not in (None, hidden // heads) or hidden % heads:
        raise _unsupported(f"text_config.head_dim {t.get('head_dim')} != hidden_size / num_attention_heads")
    kv_heads = _field({"num_key_value_heads": t.get("num_key_value_heads") or heads}, "num_key_value_heads",
                      heads, int, "text_config.")
    return TextConfig(vocab_size=get("vocab_size", 32000), hidden_size=hidden, num_layers=get("num_hidden_layers", 32),
                      num_heads=heads, num_kv_heads=kv_heads,
                      intermediate_size=get("intermediate_size", 11008),
                      max_position_embeddings=get("max_position_embeddings", 2048), rope_theta=_rope_theta(t),
                      rms_norm_eps=get("rms_norm_eps", 1e-6, float), tie_word_embeddings=tie)


def _sub(cfg: dict, key: str) -> dict:
    value = cfg.get(key)
    if not isinstance(value, dict):
        raise CheckpointError(f"config.json: {key} is missing or not an object")
    return value


# --------------------------------------------------------------------------- weights


def _checkpoint_name(native: str, prefix: str) -> str:
    if native == "decoder.lm_head.weight":
        return "lm_head.weight"
    for ours, theirs in _NAME_MAP:
        if native.startswith(ours):
            return prefix + theirs + native[len(ours):]
    raise AssertionError(f"no checkpoint name for {native}")


def _ties_embeddings(cfg: dict, weights: SafetensorsWeights, prefix: str, shape: tuple[int, int]) -> bool:
    """Whether lm_head shares the token embedding, decided as transformers does: the top-level
    tie_word_embeddings, unless the checkpoint holds a *different* lm_head.weight."""
    tie = _field(cfg, "tie_word_embeddings", False, bool, "")
    if "lm_head.weight" not in weights:
        if not tie:
            raise CheckpointError("tensor lm_head.weight is missing and config.json does not tie word embeddings")
        return True
    if not tie:
        return False
    embed = prefix + "text_model.embed_tokens.weight"
    weights.check(embed, shape)
    weights.check("lm_head.weight", shape)
    return bool(torch.equal(weights.load(embed), weights.load("lm_head.weight")))


def _patch_position_ids(side: int) -> torch.Tensor:
    """Which position-embedding row each patch of a full tile uses, computed exactly as the
    reference SmolVLM/Idefics3 vision embeddings do (fractional coordinates, bucketize). It is
    the identity for every grid we know of; gathering keeps us exact even if it is not."""
    boundaries = torch.arange(1 / side, 1.0, 1 / side)
    step = 1.0 / torch.tensor([side])  # float32, as in the reference
    coords = torch.clamp(torch.arange(side, dtype=torch.float32)[None] * step[:, None], max=1.0 - 1e-6)
    buckets = torch.bucketize(coords, boundaries, right=True)[0]  # [side]
    return (buckets[:, None] * side + buckets[None, :]).reshape(-1)  # [side * side], row-major


def _model_config(cfg_json: dict, weights: SafetensorsWeights, prefix: str) -> VLMConfig:
    vision, text = _vision_config(_sub(cfg_json, "vision_config")), _text_config(_sub(cfg_json, "text_config"), False)
    tie = _ties_embeddings(cfg_json, weights, prefix, (text.vocab_size, text.hidden_size))
    try:
        cfg = VLMConfig(vision=vision, projector=ProjectorConfig(_field(cfg_json, "scale_factor", 2, int, "")),
                        text=text.replace(tie_word_embeddings=tie),
                        image_token_id=_field(cfg_json, "image_token_id", 128257, int, ""),
                        architecture=cfg_json["model_type"])
        for part in (cfg.vision, cfg.projector, cfg.text, cfg):
            part.validate()
    except ConfigError as exc:
        raise CheckpointError(f"config.json: {exc}") from None
    return cfg


def _load_model(cfg: VLMConfig, weights: SafetensorsWeights, prefix: str):
    """A native VLM with every tensor checked (name, dtype, shape) and then loaded as fp32."""
    from edgevlm.models.vlm import VLM

    model = VLM(cfg).eval()
    tie = cfg.text.tie_word_embeddings
    native = {n: p for n, p in model.state_dict().items() if not (tie and n == "decoder.lm_head.weight")}
    names = {n: _checkpoint_name(n, prefix) for n in native}
    ignored = {n for n in weights.names() if n.endswith("rotary_emb.inv_freq")} | ({"lm_head.weight"} if tie else set())
    tensors = load_checked(weights, {names[n]: tuple(p.shape) for n, p in native.items()}, frozenset(ignored))
    state = {n: tensors[names[n]] for n in native}
    pos = "vision.encoder.position_embedding"
    state[pos] = state[pos][_patch_position_ids(cfg.vision.patches_per_side)]
    if tie:
        state["decoder.lm_head.weight"] = state["decoder.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------- tokenizer, template, processor


def _prompt_config(rendered: str, image_seq_len: int, bos: str | None) -> PromptConfig:
    if rendered.count("<image>") != 1 or rendered.count(PROMPT_MARK) != 1 or "{image}" in rendered \
            or "{prompt}" in rendered:
        raise CheckpointError("chat template does not render one <image> and one text part for a user turn")
    # As transformers' processor.apply_chat_template(tokenize=True): no tokenizer-added special
    # tokens when the rendered prompt already starts with BOS.
    return PromptConfig(template=rendered.replace("<image>", "{image}").replace(PROMPT_MARK, "{prompt}"),
                        default_prompt=DEFAULT_PROMPT, image_seq_len=image_seq_len,
                        add_special_tokens=not (bos and rendered.startswith(bos)))


def _preprocess_config(root: Path, proc: dict, vision: VisionConfig) -> PreprocessConfig:
    image = read_json(root / "preprocessor_config.json", required=False) or proc.get("image_processor")
    if not isinstance(image, dict):
        raise CheckpointError(f"{root.name}: no preprocessor_config.json (or processor_config.json image_processor)")
    for flag in ("do_resize", "do_rescale", "do_normalize"):
        if image.get(flag, True) is not True:
            raise CheckpointError(f"preprocessor config: {flag}=false is not supported")
    tile = (image.get("max_image_size") or {}).get("longest_edge", vision.image_size)
    longest = (image.get("size") or {}).get("longest_edge", 4 * tile)
    if tile != vision.image_size or not isinstance(tile, int):
        raise CheckpointError(f"preprocessor config: max_image_size {tile} != vision image_size {vision.image_size}")
    if not isinstance(longest, int) or longest <= 0:
        raise CheckpointError(f"preprocessor config: size.longest_edge {longest!r} is not a positive integer")
    resample = _RESAMPLE.get(image.get("resample", 1))
    if resample is None:
        raise CheckpointError(f"preprocessor config: resample {image.get('resample')!r} is not supported")
    max_tiles = image_tiling.max_grid(longest, tile)
    if max_tiles > MAX_TILES_LIMIT:
        raise CheckpointError(f"preprocessor config: longest_edge {longest} needs {max_tiles} tiles, "
                              f"over edgevlm's limit of {MAX_TILES_LIMIT}")
    try:
        return PreprocessConfig(tile_size=tile, longest_edge=longest, resample=resample, max_tiles=max(1, max_tiles),
                                do_split=bool(image.get("do_image_splitting", True)),
                                mean=tuple(image.get("image_mean", (0.5,) * 3)),
                                std=tuple(image.get("image_std", (0.5,) * 3)),
                                rescale_factor=image.get("rescale_factor", 1 / 255))
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"preprocessor config: {exc}") from None


def _eos_ids(gen: dict, text_json: dict, tokenizer: Tokenizer) -> tuple[int, ...]:
    """generation_config.json eos_token_id (else text_config's), plus <end_of_utterance>."""
    eos = gen.get("eos_token_id", text_json.get("eos_token_id"))
    ids = [eos] if isinstance(eos, int) else list(eos or [])
    eou = tokenizer.token_to_id(END_OF_UTTERANCE)
    ids += [eou] if eou is not None else []
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise CheckpointError(f"generation_config.json: eos_token_id {eos!r} is not a token id or list of ids")
    return tuple(dict.fromkeys(ids))


def _tokenizer(root: Path, cfg: VLMConfig) -> Tokenizer:
    if not (root / "tokenizer.json").is_file():
        raise CheckpointError(f"{root.name}: tokenizer.json not found")
    try:
        tokenizer = Tokenizer.from_file(str(root / "tokenizer.json"))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        raise CheckpointError(f"tokenizer.json is malformed: {str(exc).splitlines()[0][:160]}") from None
    if tokenizer.token_to_id("<image>") != cfg.image_token_id:
        raise CheckpointError(f"tokenizer.json: <image> is token {tokenizer.token_to_id('<image>')}, "
                              f"config.json image_token_id is {cfg.image_token_id}")
    if tokenizer.get_vocab_size() > cfg.text.vocab_size:
        raise CheckpointError(f"tokenizer.json has {tokenizer.get_vocab_size()} tokens, more than the model's "
                              f"vocab_size {cfg.text.vocab_size}")
    return tokenizer


def _load(root: Path) -> LoadedCheckpoint:
    """Everything cheap (configs, tokenizer, template, preprocessing) first; weights last."""
    cfg_json = read_json(root / "config.json")
    weights = SafetensorsWeights(root)
    prefix = "model." if any(n.startswith("model.") for n in weights.names()) else ""
    cfg = _model_config(cfg_json, weights, prefix)
    tokenizer = _tokenizer(root, cfg)
    tok_cfg = read_json(root / "tokenizer_config.json", required=False) or {}
    proc = read_json(root / "processor_config.json", required=False) or {}
    image_seq_len = proc.get("image_seq_len", cfg.image_seq_len)
    if image_seq_len != cfg.image_seq_len:
        raise CheckpointError(f"processor_config.json: image_seq_len {image_seq_len} but the model makes "
                              f"{cfg.image_seq_len} image tokens per tile")
    preprocess = _preprocess_config(root, proc, cfg.vision)
    tokens = {key: token_text(tok_cfg.get(key)) for key in ("bos_token", "eos_token", "unk_token", "pad_token")}
    rendered = render_chat_template(chat_template_source(root, tok_cfg), {k: v for k, v in tokens.items() if v})
    prompt = _prompt_config(rendered, cfg.image_seq_len, tokens["bos_token"])
    gen_json = read_json(root / "generation_config.json", required=False) or {}
    eos = _eos_ids(gen_json, _sub(cfg_json, "text_config"), tokenizer)
    max_new = gen_json.get("max_new_tokens")
    max_new = max_new if isinstance(max_new, int) and 1 <= max_new <= MAX_NEW_TOKENS_CAP else DEFAULT_MAX_NEW_TOKENS
    special = {"eos": list(eos), "image": cfg.image_token_id}
    for key in ("bos_token", "pad_token"):
        token_id = tokenizer.token_to_id(tokens[key]) if tokens[key] else None
        if token_id is not None:
            special[key.removesuffix("_token")] = token_id
    return LoadedCheckpoint(model=_load_model(cfg, weights, prefix), tokenizer=tokenizer, prompt=prompt,
                            preprocess=preprocess, special_tokens=special,
                            generation=GenerationConfig(max_new_tokens=max_new, eos_token_ids=eos))


def _detect(root: Path) -> bool:
    try:
        data = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("model_type") in MODEL_TYPES


SMOLVLM = register(Loader("smolvlm", "Hugging Face SmolVLM / Idefics3 checkpoint directories "
                                     "(config.json model_type smolvlm or idefics3)", _detect, _load))
