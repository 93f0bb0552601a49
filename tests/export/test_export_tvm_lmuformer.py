"""TVM builds of LMUFormer and Spiking LMUFormer verify against PyTorch (step and prefill graphs).

Both used to be refused: TVM 0.27's ``torch.export`` importer read out of bounds for
``x[:, -1]`` (wrong LMU memory state / a segfault), forced float64 matmuls to float32 and could
not legalize an integer clamp with one bound. ``export.tvm_frontend`` corrects those three ops.
"""

import numpy as np
import pytest
import torch
from torch import nn

from edgeseq.models import build_model
from export.artifact import export_artifact
from targets.runtimes import open_artifact

pytest.importorskip("tvm")

TINY = dict(dim=8, input_dim=3, n_classes=3, embed_layers=1, mlp_ratio=2.0)


class _FrontendOps(nn.Module):
    """The three ops the stock importer mistranslates, on a symbolic batch."""

    def forward(self, x, lags):
        last = x[:, -1]  # select with a negative index on a static dim
        first_row = x[-1]  # ... and on the symbolic batch dim
        square = x[0].double() @ x[0].double().transpose(0, 1)  # float64 matmul
        clamped = lags.clamp(min=0) + lags.clamp(max=1) + torch.clamp_min(lags, -1)  # int64, one bound
        return last * 2, first_row * 2, square.float(), clamped


def test_frontend_corrections_compute_what_pytorch_does():
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from export.tvm_frontend import convert_map

    torch.manual_seed(0)
    x, lags = torch.randn(3, 4, 4), torch.randint(-3, 4, (3, 5))
    batch = torch.export.Dim("batch", min=2, max=64)
    program = torch.export.export(_FrontendOps(), (x, lags), dynamic_shapes=({0: batch}, {0: batch}))
    executable = tvm.compile(from_exported_program(program, custom_convert_map=convert_map()), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy()), tvm.runtime.tensor(lags.numpy()))
    for out, ref in zip(got, _FrontendOps()(x, lags)):
        assert out.numpy().dtype == ref.numpy().dtype
        np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("family", ["lmuformer", "spiking-lmuformer"])
def test_tvm_export_verifies(family, tmp_path):
    torch.manual_seed(0)
    model = build_model(family, **TINY).eval()
    manifest = export_artifact(model, tmp_path / family, format="tvm", target="cpu", steps=24, prefill_length=4)
    v = manifest["verification"]
    assert v["passed"] and v["runtime"] == "tvm-cpu"
    assert max(v["max_rel_error"], v["max_rel_state_error"], v["prefill_max_rel_error"]) < 1e-4
    assert set(manifest["graphs"]) == {"step", "prefill"}
    # the artifact streams like the model from a non-zero state (the LMU memory is a state output)
    runner = open_artifact(tmp_path / family)
    frames = torch.randn(2, 6, TINY["input_dim"])
    state, reference = runner.init_state(2), model.init_state(2)
    with torch.no_grad():
        for t in range(frames.shape[1]):
            y, state = runner.step(frames[:, t], state)
            y_ref, reference = model.step(frames[:, t], reference)
            torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state["block0_memory"], reference["block0_memory"], rtol=1e-4, atol=1e-5)
