"""Datasets: sequential digits (scikit-learn's bundled 8×8 digits) and the Speech Commands loader
on a small folder of generated WAVs in the standard layout."""

from __future__ import annotations

import math
import wave

import numpy as np
import pytest
import torch

from edgeseq.datasets import digits, load_split, normalize_split
from edgeseq.datasets import speech_commands as sc
from edgeseq.errors import InputError


# ------------------------------------------------------------------------------------------
# digits
# ------------------------------------------------------------------------------------------


def test_digits_splits_are_deterministic_disjoint_and_complete():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    parts = {s: digits.split_indices(labels, s) for s in ("train", "validation", "test")}
    all_idx = np.concatenate(list(parts.values()))
    assert len(all_idx) == len(labels) == len(set(all_idx.tolist()))
    assert len(parts["train"]) == 1258 and len(parts["validation"]) == 269 and len(parts["test"]) == 270
    np.testing.assert_array_equal(parts["test"], digits.split_indices(labels, "test"))
    assert not np.array_equal(parts["test"], digits.split_indices(labels, "test", split_seed=1))


def test_digits_modes():
    rows, y = digits.load_split("test")
    assert rows.shape == (270, 8, 8) and rows.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= rows.min() and rows.max() <= 1.0 and set(y.tolist()) == set(range(10))
    pixels, y2 = digits.load_split("test", mode="pixels")
    assert pixels.shape == (270, 64, 1) and torch.equal(y, y2)
    torch.testing.assert_close(pixels.reshape(270, 8, 8), rows)  # row-major pixel order
    perm, _ = digits.load_split("test", mode="pixels", permute=True)
    order = digits.pixel_permutation(0)
    torch.testing.assert_close(perm[:, :, 0], pixels[:, order, 0])
    x_val, _ = load_split("digits", "val", limit=5)
    assert x_val.shape == (5, 8, 8)
    with pytest.raises(InputError, match="mode"):
        digits.load_split("train", mode="columns")
    with pytest.raises(InputError, match="permute"):
        digits.load_split("train", permute=True)
    with pytest.raises(InputError, match="split"):
        normalize_split("holdout")


# ------------------------------------------------------------------------------------------
# Speech Commands
# ------------------------------------------------------------------------------------------

TONES = {"yes": 500.0, "no": 1500.0, "up": 3000.0}  # one pure tone per label


def _write_wav(path, audio: np.ndarray, rate: int = sc.SAMPLE_RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


@pytest.fixture
def speech_root(tmp_path):
    """3 labels × 4 clips; clip 0 of each label is in validation, clip 1 in test; one clip short."""
    root = tmp_path / "speech_commands"
    t = np.arange(sc.SAMPLE_RATE) / sc.SAMPLE_RATE
    val, test = [], []
    for label, freq in TONES.items():
        for i in range(4):
            audio = 0.5 * np.sin(2 * math.pi * freq * t)
            if i == 3:
                audio = audio[: sc.SAMPLE_RATE // 2]  # a half-second clip: zero-padded
            _write_wav(root / label / f"spk{i}_nohash_0.wav", audio)
        val.append(f"{label}/spk0_nohash_0.wav")
        test.append(f"{label}/spk1_nohash_0.wav")
    _write_wav(root / "_background_noise_" / "noise.wav", 0.1 * np.random.default_rng(0).standard_normal(16000))
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    return root


def test_speech_commands_layout_and_features(speech_root):
    x_train, y_train = sc.load_split("train", root=str(speech_root))
    x_val, y_val = sc.load_split("validation", root=str(speech_root))
    x_test, _ = sc.load_split("test", root=str(speech_root), cache=False)
    frames = sc.frames_per_clip()
    assert frames == 98
    assert x_train.shape == (6, frames, 40) and x_val.shape == (3, frames, 40) and x_test.shape == (3, frames, 40)
    index = {w: i for i, w in enumerate(sc.KEYWORDS_V2)}  # v2 words keep their v2 class index
    assert sorted(set(y_train.tolist())) == sorted(index[w] for w in TONES)
    # each tone peaks in the mel band whose centre is closest to its frequency
    centres = sc.mel_to_hz(torch.linspace(float(sc.hz_to_mel(20.0)), float(sc.hz_to_mel(8000.0)), 42))[1:-1]
    for label, freq in TONES.items():
        clip = x_val[y_val.tolist().index(index[label])]
        peak = clip[:50].mean(0).argmax().item()
        assert abs(peak - (centres - freq).abs().argmin().item()) <= 1
    # the half-second clip is silent (log of the floor) in its second half
    short = sc.load_split("train", root=str(speech_root), cache=False)[0]
    assert short.shape == x_train.shape
    assert (short[:, -10:].amax(dim=(1, 2)) < -10).sum() == 3  # one padded clip per label
    # cached and uncached loads agree; options change the shape
    torch.testing.assert_close(sc.load_split("train", root=str(speech_root), cache=False)[0], x_train)
    assert sc.load_split("train", root=str(speech_root), n_mels=16, limit=2)[0].shape == (2, frames, 16)


def test_speech_commands_filterbank():
    fb = sc.mel_filterbank(n_mels=10, n_fft=512)
    assert fb.shape == (257, 10) and fb.min() >= 0 and fb.max() <= 1.0 + 1e-6
    assert (fb.sum(0) > 0).all()  # no empty filter
    peaks = fb.argmax(0)
    assert torch.all(peaks[1:] > peaks[:-1])  # centres increase


def test_speech_commands_errors(speech_root, tmp_path, monkeypatch):
    monkeypatch.delenv(sc.ENV_ROOT, raising=False)
    with pytest.raises(InputError, match="root="):
        sc.load_split("train")
    with pytest.raises(InputError, match="not found"):
        sc.load_split("train", root=str(tmp_path / "missing"))
    monkeypatch.setenv(sc.ENV_ROOT, str(speech_root))
    assert sc.load_split("test", cache=False)[0].shape[0] == 3
    _write_wav(speech_root / "yes" / "bad_rate.wav", np.zeros(8000), rate=8000)
    with pytest.raises(InputError, match="8000 Hz"):
        sc.load_split("train", cache=False)
    (speech_root / "yes" / "bad_rate.wav").write_bytes(b"not a wav")
    with pytest.raises(InputError, match="WAV"):
        sc.load_split("train", cache=False)
    (speech_root / "testing_list.txt").unlink()
    with pytest.raises(InputError, match="testing_list"):
        sc.load_split("train", cache=False)
