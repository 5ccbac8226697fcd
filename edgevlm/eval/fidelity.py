"""Fidelity of a candidate model to a reference: greedy-token agreement and per-token KL.

Both models are ONNX bundles run by the torch-free runtime. The reference captions each image
greedily; the candidate is then teacher-forced on exactly those tokens, so position i of both
runs predicts the same thing and their distributions can be compared one to one:

    token_agreement   fraction of positions where argmax(candidate) == the reference's greedy token
    kl_ref_cand       mean over positions of KL(p_ref || p_cand), in nats

Positions are every greedy decision of the reference: one per caption token, plus the one that
chose end-of-sequence when it stopped on eos (a candidate that never stops is then penalised).
Greedy here is plain argmax of the raw logits (no repetition penalty, no beams), whatever the
bundle's generation defaults say: fidelity measures the distributions, not a decoding policy.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from edgevlm.errors import ConfigError, GenerationError
from edgevlm.image import load_image, preprocess
from edgevlm.runtime.decoder import OnnxDecoder
from edgevlm.runtime.pipeline import VLM


def _decoder(vlm: VLM, image, new_tokens: int, prompt: str | None = None) -> OnnxDecoder:
    """A runtime decoder prepared with the image's prompt, room for `new_tokens` steps."""
    pixels, rows, cols = preprocess(load_image(image), vlm.preprocess_config)  # [tiles, 3, H, W]
    ids = np.asarray(vlm.prompter.encode(prompt, rows, cols), dtype=np.int64)  # [S]
    limit = vlm.config.text.max_position_embeddings
    if len(ids) + new_tokens > limit:
        raise GenerationError(f"prompt ({len(ids)} tokens) + {new_tokens} caption tokens exceed the model's "
                              f"context of {limit} tokens")
    (image_embeds,) = vlm.sessions["vision_encoder"].run(None, {"pixel_values": pixels})  # [tiles, T_img, D]
    embeds = vlm.embed_prompt(ids, image_embeds)  # [1, S, D]
    return OnnxDecoder(vlm.sessions, vlm.config.text, embeds, len(ids) + max(new_tokens, 1))


def greedy_logits(vlm: VLM, image, max_new_tokens: int | None = None) -> tuple[list[int], np.ndarray]:
    """-> (greedy decisions incl. a final eos if it stopped on one, logits [P, V] for each)."""
    limit = max_new_tokens or vlm.generation.max_new_tokens
    eos = set(vlm.generation.eos_token_ids)
    decoder = _decoder(vlm, image, limit)
    logits = decoder.start(1)  # [1, V]; the decoder overwrites it on the next run, hence the copies
    tokens, rows = [], []
    while True:
        rows.append(logits[0].copy())
        token = int(np.argmax(logits[0]))  # ties -> lowest id, like the generator
        tokens.append(token)
        if token in eos or len(tokens) == limit:
            break
        logits = decoder.step(np.array([token], dtype=np.int64))
    return tokens, np.stack(rows)


def forced_logits(vlm: VLM, image, tokens: list[int]) -> np.ndarray:
    """Teacher forcing: logits [len(tokens), V], row i predicting tokens[i] from tokens[:i]."""
    decoder = _decoder(vlm, image, len(tokens) - 1)
    rows = [decoder.start(1)[0].copy()]
    for token in tokens[:-1]:
        rows.append(decoder.step(np.array([token], dtype=np.int64))[0].copy())
    return np.stack(rows)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)  # float64: KL of nearly equal distributions is a small difference of logs
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref_logits: np.ndarray, cand_logits: np.ndarray) -> tuple[int, float]:
    """[P, V] each -> (positions whose argmax agree, summed KL(ref || cand) in nats)."""
    agree = int((ref_logits.argmax(-1) == cand_logits.argmax(-1)).sum())
    log_p, log_q = _log_softmax(ref_logits), _log_softmax(cand_logits)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(-1)  # [P]
    return agree, float(np.maximum(kl, 0.0).sum())  # clamp: rounding can give -1e-17


def check_compatible(candidate: VLM, reference: VLM) -> None:
    """Teacher forcing feeds the reference's token ids to the candidate: they must mean the same."""
    a, b = candidate.prompter.tokenizer, reference.prompter.tokenizer
    if candidate.config.text.vocab_size != reference.config.text.vocab_size or a.get_vocab() != b.get_vocab():
        raise ConfigError("the candidate and the reference use different tokenizers; fidelity compares "
                          "token distributions, so both must share one vocabulary")


def fidelity(candidate: VLM, reference: VLM, images, progress: bool = True) -> dict:
    """images: paths, bytes or PIL images -> {"token_agreement", "kl_ref_cand", "fidelity_positions"}."""
    check_compatible(candidate, reference)
    agree, kl, positions = 0, 0.0, 0
    for image in tqdm(images, desc="fidelity", unit="img", disable=not progress):
        tokens, ref = greedy_logits(reference, image)
        a, k = compare(ref, forced_logits(candidate, image, tokens))
        agree, kl, positions = agree + a, kl + k, positions + len(tokens)
    if positions == 0:
        raise ConfigError("fidelity needs at least one image")
    return {"token_agreement": round(agree / positions, 6), "kl_ref_cand": kl / positions,
            "fidelity_positions": positions}
