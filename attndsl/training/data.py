"""Datasets and batch samplers: a text stream (causal and masked language modelling),
source/target pairs (encoder-decoder specs) and `.npz` arrays (any inputs, e.g. images)."""

from __future__ import annotations

import json
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

    def segment(self, split: Split, batch: int, seq: int, index: int
                ) -> tuple[np.ndarray, np.ndarray, bool]:
        """Consecutive segments for recurrent-memory specs (Transformer-XL's data order):
        the split is cut into `batch` contiguous streams, and segment `index` (wrapping
        around) is `seq` tokens of each. Returns `(x, y, fresh)`; `fresh` marks the first
        segment of a pass, where carried memory must restart."""
        data = self.split(split)
        length = len(data) // batch
        count = (length - 1) // seq
        if count < 1:
            raise ValueError(f"{split} split has {len(data)} tokens: too few for {batch} "
                             f"streams of segments of {seq}")
        streams = data[:batch * length].reshape(batch, length)
        k = index % count
        return (streams[:, k * seq:(k + 1) * seq], streams[:, k * seq + 1:(k + 1) * seq + 1],
                k == 0)


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


PAIRED_SUFFIXES = (".tsv", ".jsonl")
ARRAY_SUFFIXES = (".npz",)


def load_pairs(path: str | Path) -> list[tuple[str, str]]:
    """Source/target pairs: `.tsv` (source TAB target per line) or `.jsonl` (one object per
    line with "source" and "target", or "src" and "tgt"). Blank lines are skipped; a bad
    line is an error naming it."""
    path = Path(path)
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(load_text(path).splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".tsv":
            source, tab, target = line.partition("\t")
            if not tab:
                raise ValueError(f"{path}:{number}: expected source<TAB>target")
        else:
            try:
                row = json.loads(line)
                source, target = next((row[a], row[b]) for a, b in (("source", "target"),
                                                                    ("src", "tgt"))
                                      if a in row and b in row)
            except (ValueError, StopIteration, TypeError):
                raise ValueError(f"{path}:{number}: expected a JSON object with \"source\" "
                                 "and \"target\" strings") from None
            if not isinstance(source, str) or not isinstance(target, str):
                raise ValueError(f"{path}:{number}: source and target must be strings")
        pairs.append((source, target))
    if len(pairs) < 2:
        raise ValueError(f"{path} holds {len(pairs)} pairs; need at least 2 (train and val)")
    return pairs


class PairedDataset:
    """Source -> target pairs for encoder-decoder specs, trained with teacher forcing: the
    decoder reads [BOS] + target and predicts target + [EOS]. Three ids follow the
    tokenizer's: PAD (inputs' padding; ignored by the loss), BOS and EOS. The last
    `val_fraction` of the pairs (at least one) are the validation split."""

    def __init__(self, pairs: list[tuple[str, str]], tokenizer: Tokenizer,
                 val_fraction: float = 0.1) -> None:
        self.tokenizer = tokenizer
        base = tokenizer.vocab_size
        self.pad, self.bos, self.eos = base, base + 1, base + 2
        self.vocab_size = base + 3
        encoded = [(tokenizer.encode(s), tokenizer.encode(t)) for s, t in pairs]
        n = min(len(encoded) - 1, max(1, int(len(encoded) * (1.0 - val_fraction))))
        self.splits = {"train": encoded[:n], "val": encoded[n:]}

    def get_batch(self, split: Split, batch: int, seq: int, rng: np.random.Generator,
                  ignore_index: int = -100) -> tuple[np.ndarray, ...]:
        """(source, decoder input, labels, source mask) for `batch` random pairs, each
        padded to its longest member and cut at `seq` tokens; labels are `ignore_index` on
        padding; the mask is true on real source tokens."""
        rows = self.splits[split]
        picked = [rows[i] for i in rng.integers(0, len(rows), size=batch)]
        sources = [s[:seq] or [self.pad] for s, _ in picked]
        targets = [([self.bos] + t)[:seq] for _, t in picked]
        labels = [(t + [self.eos])[:seq] for _, t in picked]
        s_len, t_len = max(map(len, sources)), max(map(len, targets))
        src = np.full((batch, s_len), self.pad, np.int64)
        tgt = np.full((batch, t_len), self.pad, np.int64)
        lab = np.full((batch, t_len), ignore_index, np.int64)
        for i, (s, t, y) in enumerate(zip(sources, targets, labels)):
            src[i, :len(s)], tgt[i, :len(t)], lab[i, :len(y)] = s, t, y
        return src, tgt, lab, src != self.pad


class ArrayDataset:
    """Arrays from an `.npz` file: one per model input (by name) plus `targets`, all with
    the same first (example) axis; the last `val_fraction` of the examples are validation."""

    def __init__(self, path: str | Path, val_fraction: float = 0.1) -> None:
        try:
            with np.load(path, allow_pickle=False) as f:
                self.arrays = {k: f[k] for k in f.files}
        except FileNotFoundError:
            raise FileNotFoundError(f"array file not found: {str(path)!r}") from None
        except (ValueError, OSError) as e:
            raise ValueError(f"{path} is not a readable .npz file ({e})") from None
        if "targets" not in self.arrays:
            raise ValueError(f"{path} has no 'targets' array (it holds "
                             f"{', '.join(self.arrays) or 'nothing'})")
        sizes = {k: a.shape[0] if a.ndim else None for k, a in self.arrays.items()}
        if len(set(sizes.values())) != 1 or None in sizes.values():
            raise ValueError(f"{path}: every array needs the same first axis, got {sizes}")
        self.tokenizer = None
        count = sizes["targets"]
        n = min(count - 1, max(1, int(count * (1.0 - val_fraction))))
        if count < 2:
            raise ValueError(f"{path} holds {count} examples; need at least 2")
        self.index = {"train": np.arange(n), "val": np.arange(n, count)}

    def get_batch(self, split: Split, batch: int, rng: np.random.Generator
                  ) -> dict[str, np.ndarray]:
        rows = rng.choice(self.index[split], size=batch)
        return {k: a[rows] for k, a in self.arrays.items()}
