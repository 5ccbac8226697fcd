"""The one model every peer runs: a random-weight checkpoint written with transformers, twice.

    vlm/    the SmolVLM-256M shape (Idefics3: SigLIP-B/16 @ 512 + SmolLM2-135M decoder), built by
            tests/smolvlm_fixtures.py like the other SmolVLM benchmarks; --smoke: the fixture's tiny
            smolvlm (2 layers, 64 wide, 32 px tiles). edgevlm exports it; PyTorch times its vision.
    llama/  its decoder alone as a LlamaForCausalLM checkpoint with the same tensors and tokenizer:
            what ORT GenAI's builder, optimum-intel and the GGUF converter take as input.

The two must be the same network, so build() checks the Llama dir's logits against the VLM's
text model before any peer sees it.

Weights are drawn with std 0.02 (transformers' own init scale), not the fixture's 0.05: through
30 untrained layers 0.05 amplifies int8/int4 rounding past `edgevlm export`'s quality gate (int8
decoder rel. RMS 0.16 > 0.1, int4 token agreement 8%), so edgevlm would refuse to write its
quantized bundles. Timings do not depend on the values, only on the shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STD = 0.02


def _write_llama(ckpt, out: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vlm = ckpt.model  # transformers Idefics3/SmolVLM ForConditionalGeneration, fp32
    config = LlamaConfig(**{k: v for k, v in vlm.config.text_config.to_dict().items()
                            if k not in ("architectures", "model_type", "transformers_version")})
    config.architectures = ["LlamaForCausalLM"]
    config.tie_word_embeddings = vlm.config.tie_word_embeddings
    llama = LlamaForCausalLM(config).eval()
    llama.model.load_state_dict(vlm.model.text_model.state_dict())
    with torch.no_grad():
        llama.lm_head.weight.copy_(vlm.lm_head.weight)
    llama.save_pretrained(out)  # fp32 safetensors
    ckpt.processor.tokenizer.save_pretrained(out)
    ids = torch.arange(3, 40)[None] % config.vocab_size  # [1, 37]
    with torch.inference_mode():
        want = vlm(input_ids=ids).logits
        got = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()(input_ids=ids).logits
    diff = (want - got).abs().max().item()
    if not diff <= 1e-4:
        raise RuntimeError(f"the Llama checkpoint disagrees with the VLM's decoder: max |diff| {diff:.2e}")


def build(work: Path, smoke: bool) -> dict:
    """Write (or reuse, when a previous run left them complete) work/vlm and work/llama."""
    sys.path.insert(0, str(ROOT))  # tests.smolvlm_fixtures lives in the source checkout
    from tests.smolvlm_fixtures import build_checkpoint

    vlm_dir, llama_dir = work / "vlm", work / "llama"
    done = llama_dir / ".complete"
    kind = "smolvlm" if smoke else "smolvlm-256m"
    if not (done.is_file() and done.read_text() == f"{kind} std {STD}"):
        ckpt = build_checkpoint(vlm_dir, kind, std=STD)
        _write_llama(ckpt, llama_dir)
        done.write_text(f"{kind} std {STD}")
    return {"kind": kind, "vlm_dir": str(vlm_dir), "llama_dir": str(llama_dir)}


def prompt_ids(llama_dir: Path, count: int, seed: int = 0) -> list[int]:
    """`count` random ordinary (non-special) token ids of the checkpoint's tokenizer, fixed by the
    seed: every peer gets the same ids, and no id is one a runtime treats specially."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(llama_dir) / "tokenizer.json"))
    first = max(tok.get_added_tokens_decoder()) + 1  # the BPE trainer numbers special tokens first
    return np.random.default_rng(seed).integers(first, tok.get_vocab_size(), count).tolist()


def tile_size(vlm_dir: Path) -> int:
    import json

    return json.loads((Path(vlm_dir) / "config.json").read_text())["vision_config"]["image_size"]
