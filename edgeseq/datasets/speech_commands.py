"""Google Speech Commands (Warden, 2018) as log-mel frames, computed in PyTorch.

The data are read from the standard folder layout (download and unpack it yourself; nothing is
fetched at run time)::

    <root>/<label>/<file>.wav          1-second, 16 kHz, mono PCM WAV files
    <root>/validation_list.txt         paths relative to <root>, one per line
    <root>/testing_list.txt
    <root>/_background_noise_/         ignored

The training split is every labelled WAV that is in neither list. ``root`` is an option
(``--data-option root=...``) or the environment variable ``EDGESEQ_SPEECH_COMMANDS``.

Features: each clip is zero-padded/cropped to 1 s, framed with a 25 ms Hann window every 10 ms
(98 frames, no centring, so frame t only sees audio up to 10·t + 25 ms: streamable), power
spectrum via ``torch.stft``, a triangular HTK-mel filterbank built here, ``log(mel + 1e-6)``,
then ``(x - mean) / std`` with the ``mean``/``std`` options (default 0 and 1: no normalisation;
the models' first BatchNorm adapts). ``torchaudio`` is not needed.

Labels: when every label folder is one of the 35 Speech Commands v2 words, the class index is the
word's position in :data:`KEYWORDS_V2` (stable across subsets); otherwise the sorted folder names.
Features are cached under ``<root>/.edgeseq-cache/`` (keyed by split and feature options).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import wave
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from edgeseq.datasets import normalize_split
from edgeseq.errors import InputError

KEYWORDS_V2 = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # fmt: skip

SAMPLE_RATE = 16000
INFO = {"n_classes": len(KEYWORDS_V2), "frame_dim": 40, "frames": 98, "sample_rate": SAMPLE_RATE}
ENV_ROOT = "EDGESEQ_SPEECH_COMMANDS"
NOISE_FOLDER = "_background_noise_"


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------


def hz_to_mel(hz: Tensor | float) -> Tensor:
    """HTK mel scale: 2595·log10(1 + f/700)."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: Tensor) -> Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = 40, n_fft: int = 512, sample_rate: int = SAMPLE_RATE,
                   f_min: float = 20.0, f_max: float | None = None) -> Tensor:
    """Triangular filters ``[n_fft // 2 + 1, n_mels]`` (float32), peaks 1, equally spaced in mel."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise InputError(f"mel filterbank needs 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [K]
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64))
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]  # [M]
    rising = (bins[:, None] - lower) / (center - lower)
    falling = (upper - bins[:, None]) / (upper - center)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def log_mel(waveforms: Tensor, n_mels: int = 40, win_ms: float = 25.0, hop_ms: float = 10.0,
            n_fft: int = 512, sample_rate: int = SAMPLE_RATE, f_min: float = 20.0,
            f_max: float | None = None) -> Tensor:
    """``[N, S]`` float waveforms in [-1, 1] -> log-mel frames ``[N, T, n_mels]`` (no centring)."""
    win = int(round(sample_rate * win_ms / 1000))
    hop = int(round(sample_rate * hop_ms / 1000))
    if win > n_fft:
        raise InputError(f"window of {win} samples is longer than n_fft={n_fft}")
    # frame t covers samples [hop·t, hop·t + win): the Hann window sits at the start of the FFT
    # buffer (zeros after it) and the signal is padded by n_fft − win so the last frame fits
    window = F.pad(torch.hann_window(win, periodic=True, dtype=waveforms.dtype), (0, n_fft - win))
    padded = F.pad(waveforms, (0, n_fft - win))
    spec = torch.stft(padded, n_fft=n_fft, hop_length=hop, window=window, center=False,
                      return_complex=True)  # [N, K, T]
    power = spec.real**2 + spec.imag**2
    fbank = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max).to(power.dtype)
    mel = torch.einsum("nkt,km->ntm", power, fbank)
    return torch.log(mel + 1e-6)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def read_wav(path: str | Path, length: int = SAMPLE_RATE) -> np.ndarray:
    """A mono 16 kHz PCM WAV as float32 in [-1, 1], zero-padded/cropped to ``length`` samples."""
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as f:
            rate, width, channels, n = f.getframerate(), f.getsampwidth(), f.getnchannels(), f.getnframes()
            raw = f.readframes(n)
    except (wave.Error, EOFError, OSError) as exc:
        raise InputError(f"{path}: not a readable PCM WAV file ({exc})") from None
    if rate != SAMPLE_RATE:
        raise InputError(f"{path}: sample rate {rate} Hz, Speech Commands needs {SAMPLE_RATE} Hz (resample it)")
    if width == 2:
        audio = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 1:
        audio = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 4:
        audio = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2147483648.0
    else:
        raise InputError(f"{path}: {8 * width}-bit samples are not supported (use 16-bit PCM)")
    if channels > 1:
        audio = audio.reshape(-1, channels).mean(axis=1)
    out = np.zeros(length, dtype=np.float32)
    out[: min(length, len(audio))] = audio[:length]
    return out


def resolve_root(root: str | Path | None) -> Path:
    if root is None:
        root = os.environ.get(ENV_ROOT)
    if not root:
        raise InputError(
            f"speech-commands needs its folder: pass --data-option root=/path/to/speech_commands_v0.02 "
            f"or set {ENV_ROOT} (download and unpack the dataset first; edgeseq downloads nothing)"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise InputError(f"{path}: Speech Commands folder not found")
    return path


def _read_list(path: Path) -> set[str]:
    if not path.is_file():
        raise InputError(f"{path}: missing (the standard Speech Commands layout has validation_list.txt and testing_list.txt)")
    return {line.strip().replace("\\", "/") for line in path.read_text().splitlines() if line.strip()}


def label_names(root: Path) -> list[str]:
    """Class names in index order (see the module docs)."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if not folders:
        raise InputError(f"{root}: no label folders (<root>/<label>/<file>.wav)")
    if set(folders) <= set(KEYWORDS_V2):
        return list(KEYWORDS_V2)
    return folders


def list_split(root: Path, split: str) -> list[tuple[str, int]]:
    """``(relative path, label index)`` of every file of ``split``, sorted by path."""
    split = normalize_split(split)
    validation = _read_list(root / "validation_list.txt")
    testing = _read_list(root / "testing_list.txt")
    names = label_names(root)
    index = {name: i for i, name in enumerate(names)}
    files = []
    for label in sorted(index):
        folder = root / label
        if not folder.is_dir():
            continue
        for wav in sorted(folder.glob("*.wav")):
            rel = f"{label}/{wav.name}"
            in_split = {"validation": rel in validation, "test": rel in testing}.get(
                split, rel not in validation and rel not in testing)
            if in_split:
                files.append((rel, index[label]))
    return files


# --------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------


def load_split(split: str = "train", root: str | None = None, n_mels: int = 40, win_ms: float = 25.0,
               hop_ms: float = 10.0, n_fft: int = 512, f_min: float = 20.0, f_max: float | None = None,
               mean: float = 0.0, std: float = 1.0, limit: int | None = None, cache: bool = True,
               progress: bool = True):
    """Log-mel frames ``[N, T, n_mels]`` float32 and labels ``[N]`` int64 of one split.

    ``limit`` keeps the first ``limit`` files (sorted by path); ``cache=False`` skips the feature
    cache; ``progress`` shows a progress bar on stderr while features are computed.
    """
    path = resolve_root(root)
    split = normalize_split(split)
    files = list_split(path, split)
    if limit is not None:
        files = files[: int(limit)]
    if not files:
        raise InputError(f"{path}: the {split} split is empty")
    n_mels, n_fft = int(n_mels), int(n_fft)
    feature_options = dict(n_mels=n_mels, win_ms=float(win_ms), hop_ms=float(hop_ms), n_fft=n_fft,
                           f_min=float(f_min), f_max=None if f_max is None else float(f_max))
    key = hashlib.sha256(json.dumps([feature_options, files], sort_keys=True).encode()).hexdigest()[:16]
    cache_file = path / ".edgeseq-cache" / f"{split}-{key}.npz"
    frames = None
    if cache and cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as data:
                frames = torch.from_numpy(data["frames"])
        except Exception:
            frames = None  # a damaged cache is recomputed
    if frames is None:
        frames = _compute(path, files, feature_options, progress)
        if cache:
            _write_cache(cache_file, frames)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ((frames - float(mean)) / float(std)).float(), labels


def _compute(root: Path, files: list[tuple[str, int]], options: dict, progress: bool, chunk: int = 256) -> Tensor:
    bar = None
    if progress and len(files) > chunk:
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="log-mel features", unit="file", file=sys.stderr)
    out = []
    for i in range(0, len(files), chunk):
        audio = np.stack([read_wav(root / rel) for rel, _ in files[i : i + chunk]])
        out.append(log_mel(torch.from_numpy(audio), **options))
        if bar is not None:
            bar.update(len(audio))
    if bar is not None:
        bar.close()
    return torch.cat(out).float()


def _write_cache(cache_file: Path, frames: Tensor) -> None:
    try:
        cache_file.parent.mkdir(exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, frames=frames.numpy())
        os.replace(tmp, cache_file)
    except OSError:
        pass  # a read-only dataset folder: work without the cache


def frames_per_clip(win_ms: float = 25.0, hop_ms: float = 10.0, sample_rate: int = SAMPLE_RATE) -> int:
    win = int(round(sample_rate * win_ms / 1000))
    hop = int(round(sample_rate * hop_ms / 1000))
    return 1 + (sample_rate - win) // hop


__all__ = [
    "INFO",
    "KEYWORDS_V2",
    "frames_per_clip",
    "hz_to_mel",
    "label_names",
    "list_split",
    "load_split",
    "log_mel",
    "mel_filterbank",
    "mel_to_hz",
    "read_wav",
    "resolve_root",
]
