"""Tokenizers: bytes (token id = byte value) and Hugging Face ``tokenizer.json`` files."""

from __future__ import annotations

from pathlib import Path

from edgeseq.errors import InputError


class ByteTokenizer:
    """Text as UTF-8 bytes: 256 ids, lossless, no files needed."""

    kind = "bytes"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) % 256 for i in ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(int(i) % 256 for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind}


class HFTokenizer:
    """A ``tokenizer.json`` read through the ``tokenizers`` library (no code is executed)."""

    kind = "hf"

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        self.path = Path(path)
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as exc:
            raise InputError(f"{self.path}: not a valid tokenizer.json ({exc})") from None
        self.vocab_size = self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode([int(i) for i in ids])

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "path": str(self.path)}


def load_tokenizer(folder: str | Path | None):
    """The folder's ``tokenizer.json`` when present, else bytes."""
    if folder is not None:
        candidate = Path(folder) / "tokenizer.json"
        if candidate.is_file():
            return HFTokenizer(candidate)
    return ByteTokenizer()
