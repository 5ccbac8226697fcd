"""SmolVLM / Idefics3 checkpoints: loader, preprocessing, logits and greedy tokens vs transformers.

Tiny random checkpoints are written with save_pretrained (tests/smolvlm_fixtures.py); the
transformers model and Idefics3Processor built beside them are the oracle. "smolvlm" is a
tied, fp32, single-file checkpoint; "idefics3" an untied, bf16, sharded one whose tokenizer
adds a BOS that its chat template also writes.
"""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgevlm
from edgevlm.errors import CheckpointError
from edgevlm.image import preprocess
from edgevlm.models.registry import load_checkpoint
from edgevlm.prompt import Prompter
from edgevlm.runtime.decoder import OnnxDecoder
from tests.smolvlm_fixtures import build_checkpoint, reference_inputs, random_photo

KINDS = ("smolvlm", "idefics3")
PROMPT = "Can you describe this image?"
SIZES = {  # (width, height); longest edge = 4 tiles, so every image is first resized to it
    "tiny": (20, 15),
    "wide": (1200, 90),
    "tall": (90, 1100),
    "split4x4": (1900, 1700),
    "photo": (640, 480),
}
GRIDS = {"tiny": (3, 4), "wide": (1, 4), "tall": (4, 1), "split4x4": (4, 4), "photo": (3, 4)}  # rows, cols


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{kind: (transformers oracle Checkpoint, edgevlm LoadedCheckpoint)}."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind in KINDS:
        ckpt = build_checkpoint(root / kind, kind)
        out[kind] = (ckpt, load_checkpoint(ckpt.path))
    return out


@pytest.fixture(scope="module")
def bundles(checkpoints, tmp_path_factory):
    """{kind: bundle path}: smolvlm through the `edgevlm export` command, idefics3 through export_bundle."""
    from edgevlm.cli import main
    from edgevlm.export.to_onnx import export_bundle

    root = tmp_path_factory.mktemp("bundles")
    result = CliRunner().invoke(main, ["export", str(checkpoints["smolvlm"][0].path), "-o", str(root / "smolvlm")])
    assert result.exit_code == 0, result.output
    ours = checkpoints["idefics3"][1]
    export_bundle(ours.model, ours.tokenizer, root / "idefics3", preprocess=ours.preprocess.to_dict(),
                  prompt=ours.prompt.to_dict(), special_tokens=ours.special_tokens,
                  generation=ours.generation.to_dict(), progress=False)
    return {kind: root / kind for kind in KINDS}


def _ours(loaded, image, split=True):
    pixels, rows, cols = preprocess(image, dataclasses.replace(loaded.preprocess, do_split=split))
    return pixels, Prompter(loaded.tokenizer, loaded.prompt).encode(PROMPT, rows, cols), rows, cols


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("kind", KINDS)
def test_config_template_and_generation_defaults(checkpoints, kind):
    ckpt, loaded = checkpoints[kind]
    cfg, hf = loaded.model.cfg, ckpt.model.config
    assert cfg.architecture == kind
    assert cfg.text.tie_word_embeddings == (kind == "smolvlm")
    assert (loaded.model.decoder.lm_head.weight is loaded.model.decoder.embed_tokens.weight) == (kind == "smolvlm")
    assert cfg.image_seq_len == ckpt.processor.image_seq_len == 4
    assert cfg.text.rope_theta == hf.text_config.rope_parameters["rope_theta"]
    assert cfg.image_token_id == hf.image_token_id == loaded.tokenizer.token_to_id("<image>")
    start = "<|begin_of_text|>" if kind == "idefics3" else "<|im_start|>"
    assert loaded.prompt.template == start + "User:{image}{prompt}<end_of_utterance>\nAssistant:"
    assert loaded.prompt.default_prompt == PROMPT
    assert loaded.prompt.add_special_tokens is False  # SmolVLM: nothing to add; Idefics3: BOS already written
    eou = loaded.tokenizer.token_to_id("<end_of_utterance>")
    assert loaded.generation.eos_token_ids == (hf.text_config.eos_token_id, eou)
    assert loaded.preprocess.do_split and loaded.preprocess.resample == "lanczos"
    assert loaded.preprocess.tile_size == cfg.vision.image_size
    assert loaded.preprocess.longest_edge == 4 * cfg.vision.image_size


def test_transformers4_directory_layout_loads_the_same(checkpoints, tmp_path):
    """Hub copies of SmolVLM-256M-Instruct were written by transformers 4.x: chat_template.json,
    preprocessor_config.json beside processor_config.json {"image_seq_len"}, rope_theta and
    rope_scaling at the top of text_config, special tokens as {"content": ...} objects."""
    ckpt, loaded = checkpoints["smolvlm"]
    path = shutil.copytree(ckpt.path, tmp_path / "v4")
    template = (path / "chat_template.jinja").read_text()
    (path / "chat_template.jinja").unlink()
    (path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    proc = json.loads((path / "processor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps(proc.pop("image_processor")))
    (path / "processor_config.json").write_text(json.dumps(proc))
    tok_cfg = json.loads((path / "tokenizer_config.json").read_text())
    tok_cfg["bos_token"] = {"content": tok_cfg["bos_token"], "special": True}
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    cfg = json.loads((path / "config.json").read_text())
    text = cfg["text_config"]
    text["rope_theta"] = text.pop("rope_parameters")["rope_theta"]
    text["rope_scaling"] = None
    del text["head_dim"]
    (path / "config.json").write_text(json.dumps(cfg))
    again = load_checkpoint(path)
    assert again.model.cfg == loaded.model.cfg
    assert (again.prompt, again.preprocess, again.generation) == (loaded.prompt, loaded.preprocess, loaded.generation)
    assert again.special_tokens == loaded.special_tokens
    for (name, a), b in zip(again.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_unsupported_model_type_lists_supported(checkpoints, tmp_path):
    path = shutil.copytree(checkpoints["smolvlm"][0].path, tmp_path / "llava")
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "model_type": "llava"}))
    with pytest.raises(CheckpointError, match="supported: .*smolvlm or idefics3"):
        load_checkpoint(path)


def _edited(src, dst, edit):
    path = shutil.copytree(src, dst)
    cfg = json.loads((path / "config.json").read_text())
    edit(cfg)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_shape_mismatch_names_the_tensor(checkpoints, tmp_path):
    path = _edited(checkpoints["smolvlm"][0].path, tmp_path / "bad",
                   lambda c: c["text_config"].update(intermediate_size=96))
    with pytest.raises(CheckpointError, match=r"tensor model\.text_model\.layers\.0\.mlp\.gate_proj\.weight has "
                                              r"shape \[128, 64\] but the config implies \[96, 64\]"):
        load_checkpoint(path)


def test_unsupported_features_and_missing_lm_head(checkpoints, tmp_path):
    src = checkpoints["smolvlm"][0].path
    path = _edited(src, tmp_path / "rope", lambda c: c["text_config"].update(
        rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}))
    with pytest.raises(CheckpointError, match="RoPE type 'llama3' is not supported"):
        load_checkpoint(path)
    path = _edited(src, tmp_path / "untied", lambda c: c.update(tie_word_embeddings=False))
    with pytest.raises(CheckpointError, match="lm_head.weight is missing"):
        load_checkpoint(path)


def test_hub_cache_snapshot_with_symlinked_shards_loads(checkpoints, tmp_path):
    """~/.cache/huggingface/hub/models--*/snapshots/<rev>/ holds symlinks into ../../blobs/."""
    ckpt, loaded = checkpoints["idefics3"]
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(ckpt.path.iterdir())):
        shutil.copy(f, blobs / f"blob{i}")
        (snapshot / f.name).symlink_to(f"../../blobs/blob{i}")
    again = load_checkpoint(snapshot)
    for (name, a), b in zip(again.model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_fp16_weights_are_widened_to_fp32(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt, loaded = checkpoints["smolvlm"]
    path = shutil.copytree(ckpt.path, tmp_path / "fp16")
    save_file({k: v.half() for k, v in load_file(path / "model.safetensors").items()}, path / "model.safetensors")
    again = load_checkpoint(path).model
    for (name, a), b in zip(again.state_dict().items(), loaded.model.state_dict().values()):
        assert a.dtype == torch.float32 and torch.equal(a, b.half().float()), name


def test_bad_dtype_and_escaping_shard_are_rejected(checkpoints, tmp_path):
    from safetensors.torch import load_file, save_file

    path = shutil.copytree(checkpoints["smolvlm"][0].path, tmp_path / "int")
    tensors = load_file(path / "model.safetensors")
    tensors["model.text_model.norm.weight"] = tensors["model.text_model.norm.weight"].to(torch.int32)
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="tensor model.text_model.norm.weight has dtype I32"):
        load_checkpoint(path)
    path = shutil.copytree(checkpoints["idefics3"][0].path, tmp_path / "escape")
    index = json.loads((path / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../elsewhere.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a plain file"):
        load_checkpoint(path)
    # weights are only ever read from safetensors: a pickle is refused, never loaded
    path = shutil.copytree(checkpoints["smolvlm"][0].path, tmp_path / "pickle")
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only safetensors weights are read"):
        load_checkpoint(path)
    (path / "pytorch_model.bin").rename(path / "model.safetensors")
    torch.save({"w": torch.zeros(2)}, path / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- preprocessing + prompt


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_ids_and_pixels_match_processor(checkpoints, kind, size):
    ckpt, loaded = checkpoints[kind]
    image = random_photo(*SIZES[size], seed=len(size))
    for split in (True, False) if size == "photo" else (True,):
        ref = reference_inputs(ckpt, image, PROMPT, split=split)
        pixels, ids, rows, cols = _ours(loaded, image, split)
        assert (rows, cols) == (GRIDS[size] if split else (0, 0))
        assert ids == ref["input_ids"][0].tolist()
        expected = ref["pixel_values"][0].numpy()
        tile = loaded.model.cfg.vision.image_size
        assert pixels.shape == expected.shape == ((rows * cols + 1) if split else 1, 3, tile, tile)
        assert np.abs(pixels - expected).max() <= 1e-6


# --------------------------------------------------------------------------- logits and tokens


@pytest.mark.parametrize("kind", KINDS)
def test_native_logits_match_transformers(checkpoints, kind):
    ckpt, loaded = checkpoints[kind]
    for size in ("wide", "photo"):
        image = random_photo(*SIZES[size], seed=7)
        ref = reference_inputs(ckpt, image, PROMPT)
        pixels, ids, _, _ = _ours(loaded, image)
        with torch.no_grad():
            expected = ckpt.model(**ref).logits[0]  # [S, V]
            got = loaded.model(torch.from_numpy(pixels), torch.tensor([ids]))[0]
        assert float((got - expected).abs().max()) <= 1e-4


def _reference_greedy(ckpt, ref, n=32):
    with torch.no_grad():
        out = ckpt.model.generate(**ref, do_sample=False, max_new_tokens=n, min_new_tokens=0,
                                  eos_token_id=None, pad_token_id=0)
    return out[0, ref["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_logits_match_transformers(checkpoints, bundles, kind):
    """Prefill, then 8 teacher-forced decode steps through the bundle's three graphs."""
    ckpt, _ = checkpoints[kind]
    vlm = edgevlm.load(bundles[kind], threads=2)
    image = random_photo(*SIZES["photo"], seed=3)
    ref = reference_inputs(ckpt, image, PROMPT)
    pixels, rows, cols = preprocess(image, vlm.preprocess_config)
    ids = vlm.prompter.encode(PROMPT, rows, cols)
    assert ids == ref["input_ids"][0].tolist()
    (image_embeds,) = vlm.sessions["vision_encoder"].run(None, {"pixel_values": pixels})
    tokens = _reference_greedy(ckpt, ref, 8)
    full = torch.tensor([ids + tokens])
    with torch.no_grad():
        expected = ckpt.model(input_ids=full, pixel_values=ref["pixel_values"],
                              pixel_attention_mask=ref["pixel_attention_mask"]).logits[0, len(ids) - 1:]
    decoder = OnnxDecoder(vlm.sessions, vlm.config.text, vlm.embed_prompt(np.asarray(ids), image_embeds), len(full[0]))
    got = [decoder.start(1)[0].copy()] + [decoder.step(np.array([t]))[0].copy() for t in tokens]
    assert np.abs(np.stack(got) - expected.numpy()).max() <= 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_runtime_greedy_tokens_equal_transformers_generate(checkpoints, bundles, kind):
    ckpt, _ = checkpoints[kind]
    vlm = edgevlm.load(bundles[kind], threads=2)
    image = random_photo(*SIZES["photo"], seed=11)
    expected = _reference_greedy(ckpt, reference_inputs(ckpt, image, PROMPT))
    result = vlm.run(image, PROMPT, max_new_tokens=32, eos_token_ids=())
    assert result.token_ids == expected
    assert len(set(expected)) >= 8  # the random model really produces varied text
    single = vlm.run(image, PROMPT, split=False, max_new_tokens=32, eos_token_ids=())
    assert single.tiles == 1 and single.token_ids == _reference_greedy(
        ckpt, reference_inputs(ckpt, image, PROMPT, split=False))


def test_caption_command_runs_on_an_exported_checkpoint(bundles, tmp_path):
    from edgevlm.cli import main

    random_photo(300, 200, seed=1).save(tmp_path / "photo.png")
    result = CliRunner().invoke(main, ["caption", str(tmp_path / "photo.png"), "--model", str(bundles["smolvlm"]),
                                       "--no-split", "--max-new-tokens", "5", "--json"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert line["tiles"] == 1 and line["tokens"] <= 5
