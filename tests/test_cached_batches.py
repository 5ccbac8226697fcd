"""The GPU data path (CachedBatches) serves exactly the batches of the reference path (CaptionBatches)."""

import pytest

torch = pytest.importorskip("torch")

from edgevlm.prompt import Prompter  # noqa: E402
from edgevlm.train.cached_batches import CachedBatches  # noqa: E402
from edgevlm.train.default_model import default_setup  # noqa: E402
from edgevlm.train.scenes_data import SceneBatches  # noqa: E402


@pytest.mark.parametrize("workers", [1, 2])
def test_cached_batches_equal_reference(workers):
    _, tokenizer, prompt, pre, gen = default_setup()
    source = SceneBatches(Prompter(tokenizer, prompt), pre, gen.eos_token_ids[0], tokenizer.token_to_id("<pad>"),
                          batch_size=8, pool=30)
    cached = CachedBatches(source, workers=workers, chunk=7)  # chunks that do not divide the pool
    assert len(cached) == 30
    for step in range(6):  # 48 items from a pool of 30: wraps round
        want, got = source.batch(step), cached.batch(step)
        for w, g in zip(want, got):
            assert w.shape == g.shape and w.dtype == g.dtype
            assert torch.equal(w, g)
