"""``build_library(..., params_as_input=True)``: a TVM library of code only, the weights passed to
``main`` after the graph's inputs in the order the build reports; the same numbers as the library
with the weights embedded.

Oracle: the same model's ``step`` in eager PyTorch over a short stream (float32; TVM reorders
sums, so 1e-5 relative to the largest logit, the bound ``export.verify`` uses for float graphs is
1e-4). A library built with the weights embedded must compute the same numbers, and feeding the
weights in another order must not (the order the facts report is the one ``main`` reads).
"""

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")


def test_default_embeds_every_parameter_of_a_tiny_model(tiny_mamba, tmp_path):
    from export.tvm_build import build_library, host_target

    # every parameter of the 16-wide model is under the default 65536 elements: nothing to feed
    assert build_library(tiny_mamba, tmp_path / "step.so", host_target(), params_as_input=True)["params"] == []


def test_params_as_input_step_matches_pytorch(tiny_mamba, tmp_path):
    import tvm
    from tvm import relax

    from export.tvm_build import build_library, host_target

    # parameters of 100 elements or more come in at run time, the smaller ones stay embedded
    facts = build_library(tiny_mamba, tmp_path / "step.so", host_target(), params_as_input=True, embed_below=100)
    names = [p["name"] for p in facts["params"]]
    weights = dict(tiny_mamba.named_parameters())
    # the wrapper's names: each is a parameter of the model, every large parameter is fed once
    stripped = [n.split(".", 1)[1] if n.startswith("model.") else n for n in names]
    assert sorted(stripped) == sorted(n for n, w in weights.items() if w.numel() >= 100)
    assert len(set(stripped)) == len(stripped) and any(w.numel() < 100 for w in weights.values())
    assert all(list(weights[n].shape) == p["shape"] and p["dtype"] == "float32" for n, p in zip(stripped, facts["params"]))
    build_library(tiny_mamba, tmp_path / "embedded.so", host_target())
    weight_bytes = 4 * sum(weights[n].numel() for n in stripped)
    # the weights stayed out: the embedded library is larger by most of their bytes (not all: the
    # embedded build folds some of them with the code around them, e.g. -exp(A_log))
    assert (tmp_path / "embedded.so").stat().st_size - (tmp_path / "step.so").stat().st_size >= 0.75 * weight_bytes

    dev = tvm.cpu(0)
    main = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "step.so")), dev)["main"]
    params = [tvm.runtime.tensor(weights[n].detach().numpy(), device=dev) for n in stripped]
    state = tiny_mamba.init_state(1)
    tvm_state = [tvm.runtime.tensor(s.numpy(), device=dev) for s in state.values()]
    tokens = torch.randint(0, 256, (6, 1), generator=torch.Generator().manual_seed(1))
    embedded = relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "embedded.so")), dev)["main"]
    embedded_state = list(tvm_state)
    worst = 0.0
    with torch.no_grad():
        for token in tokens:
            ref, state = tiny_mamba.step(token, state)
            x = tvm.runtime.tensor(token.numpy(), device=dev)
            out = main(x, *tvm_state, *params)
            logits, tvm_state = out[0].numpy(), list(out[1:])
            worst = max(worst, float(np.abs(logits - ref.numpy()).max() / np.abs(ref.numpy()).max()))
            out = embedded(x, *embedded_state)
            embedded_state = list(out[1:])
            np.testing.assert_allclose(logits, out[0].numpy(), rtol=0, atol=1e-6 * np.abs(logits).max())
    assert worst < 1e-5

    # the order matters: the same weights rotated by one position are refused or compute something else
    shuffled = params[1:] + params[:1]
    try:
        out = main(tvm.runtime.tensor(tokens[0].numpy(), device=dev),
                   *[tvm.runtime.tensor(s.numpy(), device=dev) for s in tiny_mamba.init_state(1).values()], *shuffled)
        with torch.no_grad():
            ref, _ = tiny_mamba.step(tokens[0], tiny_mamba.init_state(1))
        assert not np.allclose(out[0].numpy(), ref.numpy(), rtol=1e-3, atol=1e-4)
    except Exception as exc:  # a shape check in main: also a refusal
        assert "shape" in str(exc).lower() or "mismatch" in str(exc).lower() or "check" in str(exc).lower()
