"""The trainer: it lowers the loss, saves a loadable checkpoint with meta, and refuses bad input."""

import math

import numpy as np
import pytest
import torch

from edgeseq.checkpoints import load_model
from edgeseq.errors import InputError
from edgeseq.train import lr_at, param_groups, parse_overrides, train

TINY_MAMBA = {"d_model": 16, "n_layer": 1, "d_state": 4}


@pytest.fixture(scope="module")
def pattern_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "pattern.txt"
    path.write_text("the cat sat on the mat. " * 120)  # ~2.9 KB, highly predictable
    return path


def test_lm_training_lowers_the_loss_and_saves_a_checkpoint(pattern_file, tmp_path):
    out = tmp_path / "lm"
    result = train("mamba", str(pattern_file), out, steps=40, overrides=TINY_MAMBA, batch_size=4, seq_len=32,
                   lr=1e-2, eval_every=20, eval_max_bytes=200, quiet=True, seed=0)
    first_val = result["history"][0]["val_loss"]
    assert result["val_loss"] < math.log(256) - 1.0  # far below a uniform guess (5.55 nats)
    assert result["history"][-1]["val_loss"] <= first_val
    assert result["steps"] == 40 and result["params"] > 0 and result["task"] == "lm"
    loaded = load_model(out)
    assert loaded.model.config.d_model == 16
    meta = loaded.meta
    assert meta["task"] == "lm" and meta["dataset"] == str(pattern_file)
    assert meta["val_bits_per_byte"] == pytest.approx(result["val_bits_per_byte"])
    assert meta["params"] == result["params"] and "train_command" in meta


def test_training_is_seeded(pattern_file, tmp_path):
    kwargs = dict(overrides=TINY_MAMBA, batch_size=2, seq_len=16, eval_max_bytes=64, quiet=True, seed=3)
    a = train("mamba", str(pattern_file), tmp_path / "a", steps=3, **kwargs)
    b = train("mamba", str(pattern_file), tmp_path / "b", steps=3, **kwargs)
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


def test_classifier_training_on_an_npz_task(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=64)
    frames = rng.normal(size=(64, 5, 3)).astype(np.float32)
    frames[:, :, 0] += np.where(labels == 1, 2.0, -2.0)[:, None]  # separable by the mean of feature 0
    for split in ("train", "validation"):
        np.savez(tmp_path / f"toy-{split}.npz", frames=frames, labels=labels)
    result = train("lmuformer", str(tmp_path / "toy-{split}.npz"), tmp_path / "clf", steps=30, batch_size=16,
                   overrides={"dim": 8, "embed_layers": 1}, lr=1e-2, eval_every=15, quiet=True)
    assert result["task"] == "classify" and result["val_accuracy"] >= 0.9
    loaded = load_model(tmp_path / "clf")
    assert loaded.model.config.input_dim == 3 and loaded.model.config.n_classes == 2
    assert loaded.meta["val_accuracy"] == pytest.approx(result["val_accuracy"])


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    assert lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    values = [lr_at(s, 100, 1.0, 10, 0.1) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_weight_decay_only_on_matrices():
    from edgeseq.models import build_model

    model = build_model("mamba", **TINY_MAMBA)
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"])
    assert any(p is model.layers[0].mixer.A_log for p in no_decay["params"])


def test_overrides_parse_json_values():
    assert parse_overrides(["d_model=64", "tie_embeddings=false", "name=abc"]) == {
        "d_model": 64, "tie_embeddings": False, "name": "abc"}
    with pytest.raises(InputError, match="key=value"):
        parse_overrides(["d_model"])


@pytest.mark.parametrize("family, data, overrides, message", [
    ("transformer", "stdlib", {}, "unknown model family"),
    ("mamba", "digits", {}, "pick matching --data"),
    ("mamba", "stdlib", {"d_modle": 8}, "unknown mamba config field"),
])
def test_bad_training_requests(tmp_path, family, data, overrides, message):
    with pytest.raises(InputError, match=message):
        train(family, data, tmp_path / "x", steps=1, overrides=overrides, quiet=True)


def test_empty_text_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError, match="character"):
        train("mamba", str(empty), tmp_path / "x", steps=1, overrides=TINY_MAMBA, quiet=True)


@pytest.mark.parametrize("family, field", [("lmuformer", "input_dim"), ("spiking-lmuformer", "input_dim")])
def test_the_data_sets_the_sizes_the_config_declares(family, field):
    """Training sets the config fields that ``input_size_field``/``output_size_field`` name; the
    built model's io_spec is what the data needs, and an --set that contradicts the data is refused."""
    from edgeseq.errors import InputError
    from edgeseq.train import build_for_data

    model = build_for_data(family, "classify", "digits", {}, {"dim": 8}, frame_dim=6, n_classes=4)
    io = model.io_spec()
    assert (io.input_kind, io.input_size, io.output_size) == ("features", 6, 4)
    assert model.config.dataset == "digits"
    with pytest.raises(InputError, match="frames of 5 features, the data has 6"):
        build_for_data(family, "classify", "digits", {}, {"dim": 8, field: 5}, frame_dim=6, n_classes=4)
    lm = build_for_data("mamba", "lm", "x.txt", {}, {"d_model": 8, "n_layer": 1}, vocab_size=300)
    assert lm.io_spec().input_size == 300
    with pytest.raises(InputError, match="tokenizer has 300 tokens"):
        build_for_data("mamba", "lm", "x.txt", {}, {"vocab_size": 100}, vocab_size=300)
