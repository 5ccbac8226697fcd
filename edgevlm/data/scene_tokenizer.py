"""Word-level tokenizer for the synthetic scene captions.

Every caption word is one token, so a tiny model spends no capacity on spelling. Ids are
stable: the special tokens take 0..5 in SPECIAL_TOKENS order, then "<unk>" and the
caption words in sorted order (the vocabulary is derived from the caption grammar, so
it does not depend on which scenes were sampled).
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from edgevlm.data.scene_text import caption_words

SPECIAL_TOKENS = (
    "<pad>",
    "<|endoftext|>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    "<|caption|>",
)
UNK_TOKEN = "<unk>"


def vocabulary() -> list[str]:
    """Every word any caption can contain, sorted."""
    return sorted(caption_words())


def build_scene_tokenizer() -> Tokenizer:
    """WordLevel tokenizer: specials at ids 0..5, then "<unk>" + vocabulary, sorted."""
    tokens = list(SPECIAL_TOKENS) + sorted([UNK_TOKEN, *vocabulary()])
    tokenizer = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # Whitespace splitting drops the spaces, so decoding must put one between words.
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    # Registered as special so "<image><image>" is matched whole before pre-tokenizing
    # (Whitespace would split "<", "image", ">") and skipped by decode(skip_special_tokens).
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer
