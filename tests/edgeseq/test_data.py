"""Corpora, splits, batching and the task registry."""

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeseq.corpus import (
    SHAKESPEARE_VAL_FILE,
    STDLIB_TRAIN_MODULES,
    STDLIB_VALIDATION_MODULES,
    encode_text,
    file_split,
    load_split,
    random_windows,
    split_bytes,
    stdlib_split,
)
from edgeseq.errors import InputError
from edgeseq.tasks import TASKS, data_kind, load_classification, task_kind, task_loader
from edgeseq.tokenizer import ByteTokenizer

SHARED_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "tinyshakespeare-train.txt"


def test_split_bytes_cuts_on_a_character_boundary():
    data = ("é" * 10).encode("utf-8")  # 20 bytes, every character 2 bytes
    train, validation = split_bytes(data, 0.45)  # 9 bytes is mid-character: moved to 10
    assert len(train) == 10 and train + validation == data
    train.decode("utf-8"), validation.decode("utf-8")  # both decode


def test_file_split_is_first_90_and_last_10_percent(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcdefghij" * 10)
    train, validation = file_split(path, "train"), file_split(path, "validation")
    assert train.text + validation.text == "abcdefghij" * 10
    assert len(train.text) == 90 and validation.split == "validation"
    assert load_split(str(path), "val").text == validation.text  # alias


def test_shakespeare_validation_ships_with_the_package():
    split = load_split("shakespeare", "validation")
    assert split.dataset == "shakespeare" and split.n_bytes > 90_000
    assert split.text.startswith(SHAKESPEARE_VAL_FILE.read_text()[:100])


@pytest.mark.skipif(not SHARED_TRAIN.is_file(), reason="the tiny Shakespeare train file is not on this machine")
def test_shipped_validation_is_the_last_10_percent_of_the_train_file():
    validation = file_split(SHARED_TRAIN, "validation")
    assert validation.dataset == "shakespeare"  # recognised, so eval works offline
    assert validation.text == load_split("shakespeare").text


def test_shakespeare_train_split_asks_for_the_file():
    with pytest.raises(InputError, match="--data"):
        load_split("shakespeare", "train")


def test_stdlib_corpus_is_deterministic_and_splits_by_file():
    assert not set(STDLIB_TRAIN_MODULES) & set(STDLIB_VALIDATION_MODULES)
    train, validation = stdlib_split("train"), stdlib_split("validation")
    assert train.n_bytes > 100_000 and validation.n_bytes > 10_000
    assert stdlib_split("validation").sha256() == validation.sha256()


@pytest.mark.parametrize("spec, message", [("/no/such/file.txt", "neither a named dataset"), ("stdlib", "unknown split")])
def test_bad_specs_are_input_errors(spec, message):
    with pytest.raises(InputError, match=message):
        load_split(spec, "validation" if spec != "stdlib" else "dev")


def test_non_utf8_file_is_an_input_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        load_split(str(path), "train")


def test_encode_text_bytes_fast_path_matches_the_tokenizer():
    text = "naïve ☃ text"
    assert encode_text(ByteTokenizer(), text).tolist() == ByteTokenizer().encode(text)
    assert encode_text(ByteTokenizer(), "").numel() == 0


def test_random_windows_are_seeded_contiguous_slices():
    ids = torch.arange(100)
    a = random_windows(ids, 5, 9, torch.Generator().manual_seed(3))
    b = random_windows(ids, 5, 9, torch.Generator().manual_seed(3))
    assert a.shape == (5, 10) and torch.equal(a, b)
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(5, 9, dtype=a.dtype))  # consecutive tokens
    with pytest.raises(InputError, match="seq-len"):
        random_windows(torch.arange(5), 1, 9, torch.Generator())


def test_task_registry_names_the_classification_tasks():
    assert TASKS["digits"] == "edgeseq.datasets.digits:load_split"
    assert TASKS["speech-commands"] == "edgeseq.datasets.speech_commands:load_split"
    assert task_kind("shakespeare") == "lm" and task_kind("digits") == "classify"
    assert data_kind("some.txt") == "lm" and data_kind("x.npz") == "classify"
    assert callable(task_loader("stdlib"))
    with pytest.raises(InputError, match="unknown task"):
        task_kind("imagenet")


def test_npz_classification_data(tmp_path):
    frames = np.random.default_rng(0).normal(size=(6, 4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d-validation.npz", frames=frames, labels=labels)
    x, y = load_classification(str(tmp_path / "d-{split}.npz"), "validation")
    assert x.shape == (6, 4, 3) and y.dtype == torch.int64
    np.savez(tmp_path / "bad.npz", frames=frames[0], labels=labels)
    with pytest.raises(InputError, match=r"\[N, T, F\]"):
        load_classification(str(tmp_path / "bad.npz"), "train")
    with pytest.raises(InputError, match="not found"):
        load_classification(str(tmp_path / "missing.npz"), "train")


def test_shakespeare_calibration_slice_is_held_out_from_validation():
    """Quantization calibrates on the shipped slice of the train part, never on evaluation text."""
    from edgeseq.corpus import load_split

    calib = load_split("shakespeare", "calibration").text
    validation = load_split("shakespeare", "validation").text
    assert len(calib.encode()) >= 60_000
    assert calib[:2000] not in validation and calib[-2000:] not in validation
