"""Tokenizers: character-level, byte-level and byte-level BPE.

All tokenizers share one interface (:class:`Tokenizer`): ``vocab_size``,
``encode(text) -> list[int]`` with every id in ``[0, vocab_size)``,
``decode(ids) -> str`` and ``to_json() -> dict`` (JSON-serializable, with a
``"kind"`` field) whose inverse is :func:`tokenizer_from_json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

TOKENIZER_KINDS = ("char", "byte", "bpe")


class Tokenizer(Protocol):
    """Common interface of the tokenizers in this module."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per character; ids are ranks in the sorted character set.

    ``decode(encode(s)) == s`` for every ``s`` made of known characters.
    """

    def __init__(self, chars: Sequence[str]) -> None:
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer vocabulary entries must be single characters")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer vocabulary contains duplicate characters")
        self.chars: tuple[str, ...] = tuple(chars)
        self._stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Vocabulary = sorted set of the characters of ``text``."""
        if not text:
            raise ValueError("cannot build a CharTokenizer from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(
                f"character {e.args[0]!r} is not in the CharTokenizer vocabulary"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        n = len(self.chars)
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"token id {bad[0]} is out of range for vocab size {n}")
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "char", "chars": "".join(self.chars)}


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocab 256); invalid UTF-8 decodes to U+FFFD."""

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        try:
            data = bytes(ids)
        except ValueError:
            raise ValueError("ByteTokenizer ids must be in range [0, 256)") from None
        return data.decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        return {"kind": "byte"}


class BPETokenizer:
    """Byte-level BPE backed by the HuggingFace ``tokenizers`` library.

    Uses a ByteLevel pre-tokenizer (no prefix space) and ByteLevel decoder, so
    ``decode(encode(s)) == s`` for any string ``s``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    @classmethod
    def train_from_text(cls, text: str, vocab_size: int = 1024) -> BPETokenizer:
        """Train on ``text``; the vocab holds the 256 byte symbols plus merges.

        The resulting ``vocab_size`` may be smaller than requested when the
        text admits fewer merges.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 256:
            raise ValueError(f"BPE vocab_size must be >= 256 (the byte alphabet), got {vocab_size}")
        if not text:
            raise ValueError("cannot train a BPETokenizer on empty text")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
        return cls(tok)

    @classmethod
    def from_str(cls, serialized: str) -> BPETokenizer:
        """Inverse of ``to_json()["tokenizer"]``."""
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(serialized))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "bpe", "tokenizer": self._tok.to_str()}


def tokenizer_from_json(d: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from its ``to_json()`` dict."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "char":
        if not isinstance(d.get("chars"), str) or not d["chars"]:
            raise ValueError("char tokenizer: 'chars' should be a non-empty string")
        return CharTokenizer(list(d["chars"]))
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        try:
            return BPETokenizer.from_str(d["tokenizer"])
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exception
            raise ValueError(f"bpe tokenizer: cannot rebuild it ({e})") from None
    raise ValueError(
        f"unknown tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}"
    )


def make_tokenizer(kind: str, text: str, vocab_size: int | None = None) -> Tokenizer:
    """Build a tokenizer of ``kind`` ("char", "byte" or "bpe") for ``text``.

    ``vocab_size`` is only used by "bpe" (default 1024).
    """
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.train_from_text(
            text, vocab_size=1024 if vocab_size is None else vocab_size
        )
    raise ValueError(
        f"unknown tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}"
    )


def tokenizer_of(state: dict[str, Any] | None) -> Tokenizer:
    """A training run's tokenizer (from its state.json), else the byte tokenizer (a spec
    file, or a run trained on arrays)."""
    if state and "tokenizer" in state:
        return tokenizer_from_json(state["tokenizer"])
    return ByteTokenizer()
