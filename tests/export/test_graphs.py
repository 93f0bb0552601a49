"""``export.graphs``: the step/prefill I/O comes from the model's ``io_spec()`` and ``state_spec()``,
and ``check_state_spec`` refuses a model whose declarations its own step contradicts."""

import pytest
import torch

from edgeseq.errors import InputError
from edgeseq.models import build_model
from edgeseq.streaming import IOSpec
from export.graphs import check_state_spec, example_args, prefill_io, sample_inputs, step_io


def test_step_io_follows_io_spec_for_tokens_and_frames():
    lm = build_model("mamba", vocab_size=37, d_model=8, n_layer=1, d_state=4)
    io = step_io(lm)
    assert io.inputs[0] == {"name": "token", "shape": ["batch"], "dtype": "int64"}
    assert io.outputs[0] == {"name": "logits", "shape": ["batch", 37], "dtype": "float32"}
    clf = build_model("lmuformer", input_dim=5, dim=8, depth=1, n_classes=3)
    io = prefill_io(clf, 16, torch.float16)
    assert io.inputs[0] == {"name": "frame", "shape": ["batch", 16, 5], "dtype": "float16"}
    assert io.outputs[0] == {"name": "scores", "shape": ["batch", 16, 3], "dtype": "float16"}
    ids = sample_inputs(lm, 2, 50, seed=1)
    assert ids.dtype == torch.int64 and int(ids.max()) < 37
    frame, *state = example_args(clf, 2, None, torch.float32)
    assert frame.shape == (2, 5) and len(state) == len(clf.state_spec())


def test_check_state_spec_refuses_an_io_spec_the_step_contradicts():
    model = build_model("mamba", vocab_size=37, d_model=8, n_layer=1, d_state=4)
    assert len(check_state_spec(model)) == 2
    model.io_spec = lambda: IOSpec.tokens(37, output_size=40)  # claims 40 logits; step returns 37
    with pytest.raises(InputError, match=r"io_spec\(\) says \(2, 40\)"):
        check_state_spec(model)
