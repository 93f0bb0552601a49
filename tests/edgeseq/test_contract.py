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
    code = ("import sys, edgeseq, edgeseq.checkpoints, edgeseq.models.mamba, edgeseq.models.mamba_convert; "
            "print(sorted(m for m in ('tvm', 'onnxruntime', 'onnx', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
