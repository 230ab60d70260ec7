"""llguidance's bitmask (little-endian u32 words) read as one bool per logit (serve/grammar.py)."""

from __future__ import annotations

import numpy as np

from services.worker.runner.serve.grammar import allowed_tokens


def test_bits_map_to_token_ids_and_logits_past_the_vocabulary_are_never_allowed() -> None:
    words = np.array([0b101, 1 << 31], dtype="<u4")  # tokens 0, 2 and 63
    allowed = allowed_tokens(words.tobytes(), 70)
    assert list(np.flatnonzero(allowed)) == [0, 2, 63]
    assert allowed.shape == (70,)
    assert list(np.flatnonzero(allowed_tokens(words.tobytes(), 3))) == [0, 2]
