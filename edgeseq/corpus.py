"""Text corpora for language models: named datasets, text files, splits and training batches.

A *data spec* names the text a language model trains or is evaluated on:

* ``"shakespeare"`` — tiny Shakespeare. Its validation split (~100 KB) ships with edgeseq as
  package data (``edgeseq/corpora/shakespeare-val.txt``), so evaluation works offline. Its train
  split is not shipped: train on the file itself (``--data PATH/tinyshakespeare-train.txt``),
  which the file convention below splits into the same train/validation halves.
* ``"stdlib"`` — a built-in corpus that exists on every machine without downloads: a fixed list
  of the Python standard library's source files, read from this interpreter's ``stdlib`` folder.
  Its bytes depend on the Python version (3.10, 3.11, 3.12 ship different sources), so use it for
  tests, smoke runs and defaults, never for numbers you compare across machines.
* a path to a UTF-8 text file — split by position: the first 90% of its bytes are the train
  split, the last 10% the validation split (cut on a UTF-8 character boundary); split ``"all"``
  is the whole file (what ``edgeseq eval --data FILE`` scores by default).

Splits are named ``"train"`` and ``"validation"`` (``"val"`` is accepted), ``"all"`` for files.
"""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from edgeseq.errors import InputError

CORPORA_DIR = Path(__file__).parent / "corpora"
SHAKESPEARE_VAL_FILE = CORPORA_DIR / "shakespeare-val.txt"
# the first 64 KB of the train part (held out from validation): what post-training quantization
# calibrates on when the full train split is not at hand
SHAKESPEARE_CALIB_FILE = CORPORA_DIR / "shakespeare-calib.txt"
TRAIN_FRACTION = 0.9

# The built-in corpus: standard-library modules (file stem relative to the stdlib folder).
# Train and validation are different files, so validation text is never seen in training.
STDLIB_TRAIN_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "bisect", "calendar", "colorsys", "contextlib", "copy", "csv",
    "dataclasses", "enum", "fnmatch", "fractions", "functools", "glob", "heapq", "inspect",
    "json/decoder", "json/encoder", "pprint", "queue", "random", "shlex", "statistics",
    "string", "tokenize", "typing",
)
STDLIB_VALIDATION_MODULES: tuple[str, ...] = ("difflib", "textwrap", "gettext")

NAMED_DATASETS = ("shakespeare", "stdlib")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "validation", "validation": "validation",
                 "valid": "validation", "calibration": "calibration", "calib": "calibration", "all": "all"}


@dataclass(frozen=True)
class TextSplit:
    """One split of a corpus: its text and where it came from."""

    dataset: str  # "shakespeare", "stdlib" or a file path
    split: str  # "train" | "validation"
    text: str
    source: str  # human-readable origin (file path or module list)

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------


def normalize_split(split: str) -> str:
    try:
        return SPLIT_ALIASES[split]
    except KeyError:
        raise InputError(f"unknown split {split!r}; use 'train', 'validation', 'calibration' or 'all' (a whole text file)") from None


def split_bytes(data: bytes, fraction: float = TRAIN_FRACTION) -> tuple[bytes, bytes]:
    """Cut ``data`` at ``fraction`` of its length, moved forward to a UTF-8 character boundary."""
    cut = int(len(data) * fraction)
    while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # continuation byte: not a boundary
        cut += 1
    return data[:cut], data[cut:]


def read_text_file(path: str | Path) -> str:
    """A UTF-8 text file; missing, unreadable or non-UTF-8 files are a one-line InputError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path}: data file not found (pass a UTF-8 text file or one of: {', '.join(NAMED_DATASETS)})")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start}); convert it to UTF-8") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def file_split(path: str | Path, split: str) -> TextSplit:
    """The train (first 90%) or validation (last 10%) split of a text file."""
    split = normalize_split(split)
    data = read_text_file(path).encode("utf-8")
    train, validation = split_bytes(data)
    chosen = data if split == "all" else validation if split == "validation" else train  # calibration: train
    dataset = str(path)
    # the shipped Shakespeare validation split is the last 10% of tinyshakespeare-train.txt:
    # recognise the file, so models trained on it evaluate offline on the shipped copy.
    if SHAKESPEARE_VAL_FILE.is_file() and validation == SHAKESPEARE_VAL_FILE.read_bytes():
        dataset = "shakespeare"
    return TextSplit(dataset, split, chosen.decode("utf-8"), str(path))


def _no_all(name: str, split: str) -> None:
    if split == "all":
        raise InputError(f"--split all scores a whole text file; {name} is a named dataset: use 'validation' or 'train'")


def shakespeare_split(split: str) -> TextSplit:
    split = normalize_split(split)
    _no_all("shakespeare", split)
    if split == "calibration":
        return TextSplit("shakespeare", split, SHAKESPEARE_CALIB_FILE.read_text(encoding="utf-8"), str(SHAKESPEARE_CALIB_FILE))
    if split == "train":
        raise InputError(
            "the shakespeare train split is not shipped with edgeseq: pass the text file itself, "
            "e.g. --data PATH/tinyshakespeare-train.txt (its first 90% is the train split)"
        )
    if not SHAKESPEARE_VAL_FILE.is_file():  # pragma: no cover - a broken install
        raise InputError(f"{SHAKESPEARE_VAL_FILE}: missing from this installation; reinstall edgeseq")
    return TextSplit("shakespeare", split, SHAKESPEARE_VAL_FILE.read_text(encoding="utf-8"), str(SHAKESPEARE_VAL_FILE))


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_module_path(module: str) -> Path | None:
    """Source file of a standard-library module (``name.py`` or ``name/__init__.py``), if present."""
    root = stdlib_root()
    for candidate in (root / f"{module}.py", root / module / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def stdlib_split(split: str) -> TextSplit:
    """The built-in corpus: the fixed modules' sources concatenated in list order."""
    split = normalize_split(split)
    _no_all("stdlib", split)
    modules = STDLIB_VALIDATION_MODULES if split == "validation" else STDLIB_TRAIN_MODULES
    parts, found = [], []
    for module in modules:
        path = stdlib_module_path(module)
        if path is not None:
            parts.append(path.read_text(encoding="utf-8"))
            found.append(module)
    if not parts:
        raise InputError(f"no standard-library sources found under {stdlib_root()}; pass --data FILE instead")
    return TextSplit("stdlib", split, "\n".join(parts), f"python stdlib ({stdlib_root()}): {', '.join(found)}")


def load_split(data: str | Path, split: str = "validation") -> TextSplit:
    """Resolve a data spec (``shakespeare``, ``stdlib`` or a text file path) to one split."""
    spec = str(data)
    if spec == "shakespeare":
        return shakespeare_split(split)
    if spec == "stdlib":
        return stdlib_split(split)
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputError(
            f"{spec!r} is neither a named dataset ({', '.join(NAMED_DATASETS)}) nor an existing text file"
        )
    return file_split(path, split)


def require_text(split: TextSplit, min_chars: int = 2) -> TextSplit:
    if len(split.text) < min_chars:
        raise InputError(f"{split.source}: the {split.split} split holds {len(split.text)} character(s); need at least {min_chars}")
    return split


# --------------------------------------------------------------------------------------------
# tokens and batches
# --------------------------------------------------------------------------------------------


def encode_text(tokenizer, text: str) -> Tensor:
    """Token ids of ``text`` as int64 ``[N]`` (fast path for the byte tokenizer)."""
    if getattr(tokenizer, "kind", "bytes") == "bytes":
        data = text.encode("utf-8")
        if not data:
            return torch.zeros(0, dtype=torch.int64)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)
    return torch.tensor(tokenizer.encode(text), dtype=torch.int64)


def random_windows(ids: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` random windows of ``seq_len + 1`` tokens: ``[B, seq_len + 1]`` int64.

    Inputs are ``w[:, :-1]``, targets ``w[:, 1:]``. Starts are drawn uniformly with ``generator``
    (seeded by the caller), so a run is reproducible.
    """
    window = seq_len + 1
    if ids.numel() < window:
        raise InputError(f"the text holds {ids.numel()} tokens, fewer than seq_len + 1 = {window}; use a smaller --seq-len or more text")
    starts = torch.randint(0, ids.numel() - window + 1, (batch_size,), generator=generator)
    offsets = torch.arange(window)
    return ids[starts[:, None] + offsets[None, :]]


__all__ = [
    "NAMED_DATASETS",
    "SHAKESPEARE_VAL_FILE",
    "STDLIB_TRAIN_MODULES",
    "STDLIB_VALIDATION_MODULES",
    "TextSplit",
    "encode_text",
    "file_split",
    "load_split",
    "normalize_split",
    "random_windows",
    "read_text_file",
    "require_text",
    "split_bytes",
    "stdlib_split",
]
