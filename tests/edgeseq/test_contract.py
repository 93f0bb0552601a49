"""The streaming-model contract (``edgeseq.streaming``) and the model registry.

A toy model with a known closed form (an exponential moving average) checks the base class's
provided methods; Mamba checks the flat export wrappers.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from edgeseq.errors import InputError
from edgeseq.models import MODEL_FAMILIES, build_model, config_class
from edgeseq.models.mamba import Mamba, MambaConfig
from edgeseq.streaming import (
    FlatPrefill,
    FlatStep,
    ModelConfig,
    StateSpec,
    StreamingModel,
    running_mean_scores,
)


@dataclass
class EMAConfig(ModelConfig):
    family = "ema-test"
    features: int = 3
    decay: float = 0.5
    kernel: tuple = (1, 2)


class EMA(StreamingModel):
    """y_t = h_t = decay·h_{t-1} + W x_t, with the parallel form as an explicit sum."""

    task = "classify"

    def __init__(self, config: EMAConfig):
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.features, config.features, bias=False)

    def forward(self, x):  # [B, T, F]
        drive = self.proj(x)
        length = x.shape[1]
        t = torch.arange(length, dtype=x.dtype)
        weights = torch.tril(self.config.decay ** (t[:, None] - t[None, :]).clamp(min=0))
        return torch.einsum("ts,bsf->btf", weights, drive)

    def step(self, x_t, state):
        h = self.config.decay * state["h"] + self.proj(x_t)
        return h, {"h": h}

    def state_spec(self):
        return [StateSpec("h", (self.config.features,))]


def test_config_json_round_trip_keeps_tuples_and_rejects_unknown_fields():
    cfg = EMAConfig(features=4, decay=0.25, kernel=(3, 5))
    text = cfg.to_json()
    assert '"family": "ema-test"' in text
    assert EMAConfig.from_json(text) == cfg
    with pytest.raises(InputError, match="unknown EMAConfig field"):
        EMAConfig.from_dict({"features": 2, "colour": "red"})


def test_base_class_prefill_init_state_and_step_sequence():
    model = EMA(EMAConfig()).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    state = model.init_state(2)
    assert state["h"].shape == (2, 3) and state["h"].dtype == torch.float64
    y, final = model.prefill(x)
    assert (y - model(x)).abs().max().item() <= 1e-12
    assert (final["h"] - y[:, -1]).abs().max().item() <= 1e-12
    stepped, _ = model.step_sequence(x)
    assert (stepped - y).abs().max().item() <= 1e-12
    assert model.state_names() == ["h"] and model.family == "ema-test"
    assert StateSpec("h", (3,)).to_dict() == {"name": "h", "shape": [3], "dtype": "float32"}


def test_running_mean_scores():
    scores = torch.tensor([[[1.0], [3.0], [5.0]]])
    assert running_mean_scores(scores).flatten().tolist() == [1.0, 2.0, 3.0]


def test_flat_step_and_prefill_follow_state_spec_order():
    model = Mamba(MambaConfig(vocab_size=30, d_model=16, n_layer=2, d_state=4)).eval()
    names = model.state_names()
    tokens = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        flat_prefill = FlatPrefill(model)(tokens)
        logits, state = model.prefill(tokens)
        assert torch.equal(flat_prefill[0], logits)
        for name, tensor in zip(names, flat_prefill[1:]):
            assert torch.equal(tensor, state[name])
        flat_step = FlatStep(model)(tokens[:, 0], *[state[n] for n in names])
        step_logits, new_state = model.step(tokens[:, 0], state)
    assert len(flat_step) == 1 + len(names)
    assert torch.equal(flat_step[0], step_logits)
    for name, tensor in zip(names, flat_step[1:]):
        assert torch.equal(tensor, new_state[name])


def test_registry_builds_mamba_and_rejects_unknown_families():
    assert "mamba" in MODEL_FAMILIES
    assert config_class("mamba") is MambaConfig
    model = build_model("mamba", {"vocab_size": 20, "d_model": 8, "n_layer": 1}, d_state=2)
    assert model.config.d_state == 2 and model.task == "lm"
    with pytest.raises(InputError, match="unknown model family"):
        build_model("transformer-xl")


def test_import_edgeseq_stays_light():
    """``import edgeseq`` (and loading a checkpoint module) must not import TVM or ONNX Runtime."""
    code = ("import sys, edgeseq, edgeseq.checkpoints, edgeseq.models.mamba, edgeseq.convert.mamba; "
            "print(sorted(m for m in ('tvm', 'onnxruntime', 'onnx', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------
# io_spec: what step takes and returns, declared by every model
# ------------------------------------------------------------------------------------------

SMALL = {
    "mamba": dict(vocab_size=37, d_model=8, n_layer=1, d_state=4),
    "mamba2": dict(vocab_size=37, d_model=16, n_layer=1, d_state=8, headdim=8),
    "spikegpt": dict(vocab_size=37, d_model=8, n_layer=1),
    "lmuformer": dict(input_dim=5, dim=8, depth=1, n_classes=3),
    "spiking-lmuformer": dict(input_dim=5, dim=8, depth=1, n_classes=3),
}


def _small_models():
    from edgeseq.spiking.mlp import SpikingMLP, SpikingMLPConfig

    assert set(SMALL) == set(MODEL_FAMILIES), "a new family needs an entry here"
    models = [pytest.param(lambda f=f: build_model(f, **SMALL[f]), id=f) for f in sorted(SMALL)]
    return models + [pytest.param(lambda: SpikingMLP(SpikingMLPConfig(in_features=5, hidden=(6,), n_classes=3)),
                                  id="spiking-mlp")]


@pytest.mark.parametrize("make", _small_models())
def test_io_spec_is_what_step_takes_and_returns(make):
    """Oracle: the model's own step and forward. Inputs built from io_spec alone are accepted and
    give outputs of the declared size; one past the declared input size is refused."""
    torch.manual_seed(0)
    model = make().eval()
    io = model.io_spec()
    cfg = model.config
    # the config fields training sets name the same sizes
    assert getattr(cfg, cfg.input_size_field) == io.input_size
    assert getattr(cfg, cfg.output_size_field) == io.output_size
    assert io.input_kind == ("tokens" if model.task == "lm" else "features")
    assert io.output_kind == ("logits" if model.task == "lm" else "scores")
    batch = 3
    with torch.no_grad():
        if io.input_kind == "tokens":
            x = torch.tensor([0, io.input_size // 2, io.input_size - 1], dtype=io.input_dtype)
        else:
            x = torch.randn(batch, io.input_size, dtype=io.input_dtype)
        assert tuple(x.shape) == io.step_input_shape(batch)
        y, _ = model.step(x, model.init_state(batch))
        assert tuple(y.shape) == io.step_output_shape(batch)
        seq = x[:, None].expand(batch, 4, *x.shape[1:])
        assert tuple(model(seq).shape) == (batch, 4, io.output_size)
        # the declared input size is the real one: one more is refused
        if io.input_kind == "tokens":
            bad = torch.full((batch,), io.input_size, dtype=io.input_dtype)
        else:
            bad = torch.randn(batch, io.input_size + 1)
        with pytest.raises((IndexError, RuntimeError, InputError)):
            model.step(bad, model.init_state(batch))


def test_io_spec_records_round_trip_and_bad_ones_are_one_line_errors():
    from edgeseq.streaming import IOSpec

    lm, clf = IOSpec.tokens(50), IOSpec.features(7, 4)
    assert lm.to_dict() == {"input_kind": "tokens", "input_size": 50, "input_dtype": "int64",
                            "output_kind": "logits", "output_size": 50}
    assert clf.input_dtype == torch.float32 and clf.vocab_size is None and lm.vocab_size == 50
    assert IOSpec.from_dict(lm.to_dict()) == lm and IOSpec.from_dict(clf.to_dict()) == clf
    assert IOSpec.from_dict({**clf.to_dict(), "input_dtype": "float16"}).input_dtype == torch.float16
    with pytest.raises(InputError, match="input_kind"):
        IOSpec("pixels", 3, "scores", 2)
    with pytest.raises(InputError, match="positive"):
        IOSpec.features(0, 2)
    with pytest.raises(InputError, match="integer dtype"):
        IOSpec("tokens", 5, "logits", 5, torch.float32)
    with pytest.raises(InputError, match="not an IOSpec record"):
        IOSpec.from_dict({"input_kind": "tokens"})


def test_a_model_without_io_spec_is_refused_with_one_line():
    with pytest.raises(InputError, match="EMA does not declare .* implement io_spec"):
        EMA(EMAConfig()).io_spec()
