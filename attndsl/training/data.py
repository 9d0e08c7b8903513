"""Text datasets and batch samplers for causal and masked language modelling."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from attndsl.training.tokenizers import Tokenizer

Split = Literal["train", "val"]


def load_text(path: str | Path) -> str:
    """Read a UTF-8 text file."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"text file not found: {str(path)!r}") from None


class TextDataset:
    """A token stream split nanoGPT-style into train (first part) and val (last part).

    ``train`` holds the first ``int(len * (1 - val_fraction))`` tokens and
    ``val`` the rest; both are 1-D int64 arrays.
    """

    def __init__(self, text: str, tokenizer: Tokenizer, val_fraction: float = 0.1) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.tokenizer = tokenizer
        self.tokens = np.asarray(tokenizer.encode(text), dtype=np.int64)
        n = int(len(self.tokens) * (1.0 - val_fraction))
        self.train = self.tokens[:n]
        self.val = self.tokens[n:]

    def split(self, split: Split) -> np.ndarray:
        """The 1-D int64 token array of ``split``."""
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")

    def get_batch(
        self, split: Split, batch: int, seq: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``batch`` windows at uniform random offsets (as nanoGPT's get_batch).

        Returns int64 ``(x, y)`` of shape ``(batch, seq)`` with
        ``y[:, t] == x[:, t + 1]`` for ``t < seq - 1`` (next-token targets).
        """
        if batch < 1 or seq < 1:
            raise ValueError(f"batch and seq must be >= 1, got batch={batch}, seq={seq}")
        data = self.split(split)
        if len(data) <= seq:
            raise ValueError(
                f"{split} split has {len(data)} tokens, need more than seq={seq} "
                "to sample a window plus its shifted targets"
            )
        ix = rng.integers(0, len(data) - seq, size=batch)
        idx = ix[:, None] + np.arange(seq)
        return data[idx], data[idx + 1]


def masked_lm_batch(
    tokens: np.ndarray,
    vocab_size: int,
    mask_token_id: int,
    rng: np.random.Generator,
    mask_prob: float = 0.15,
    ignore_index: int = -100,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of int64 ``tokens`` (B, T) -> ``(inputs, targets)``, both (B, T) int64.

    Each position is selected with probability ``mask_prob``; a selected
    position becomes ``mask_token_id`` (80%), a uniform random id in
    ``[0, vocab_size)`` (10%) or stays unchanged (10%). ``targets`` holds the
    original token at selected positions and ``ignore_index`` elsewhere.
    ``tokens`` is not modified.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    tokens = np.asarray(tokens, dtype=np.int64)
    selected = rng.random(tokens.shape) < mask_prob
    u = rng.random(tokens.shape)
    to_mask = selected & (u < 0.8)
    to_random = selected & (u >= 0.8) & (u < 0.9)
    inputs = tokens.copy()
    inputs[to_mask] = mask_token_id
    inputs[to_random] = rng.integers(0, vocab_size, size=int(to_random.sum()))
    targets = np.where(selected, tokens, np.int64(ignore_index))
    return inputs, targets
