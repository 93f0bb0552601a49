"""Float32 export of Mamba: ONNX Runtime and TVM artifacts against PyTorch (the oracle: the same
model's ``step``/``prefill`` in eager PyTorch).

Tolerance (relative to the largest reference magnitude): 1e-4, see ``export.verify`` — graph
runtimes reorder float32 sums (~1e-6 relative per step) and the recurrences decay, so the error
does not grow over the stream.
"""

import json

import numpy as np
import pytest
import torch

from export.artifact import export_artifact
from targets.runtimes import open_artifact


def test_onnx_step_and_prefill_match_pytorch(tiny_mamba, tmp_path):
    out = tmp_path / "art"
    manifest = export_artifact(tiny_mamba, out, format="onnx", target="cpu", steps=64, prefill_length=16)
    v = manifest["verification"]
    assert v["passed"] and v["steps"] == 64 and v["max_rel_error"] < 1e-4 and v["prefill_max_rel_error"] < 1e-4
    assert json.loads((out / "manifest.json").read_text()) == manifest
    kernels = {lib["file"] for lib in manifest["fused_ops"].get("libraries", {}).values()}  # export.fused_ops
    assert {f["path"] for f in manifest["files"]} == {"step.onnx", "prefill.onnx", "weights.bin", "reference.npz", *kernels}
    step = manifest["graphs"]["step"]
    assert step["inputs"][0] == {"name": "token", "shape": ["batch"], "dtype": "int64"}
    assert [t["name"] for t in step["inputs"][1:3]] == ["conv_0", "ssm_0"]
    assert [t["name"] for t in step["outputs"][:2]] == ["logits", "new_conv_0"]
    assert manifest["graphs"]["prefill"]["length"] == 16 and manifest["opset"] == 18

    # a prompt that is not a multiple of the prefill length, batch 3: chunks + steps vs PyTorch
    runner = open_artifact(out, threads=1)
    tokens = torch.randint(0, 256, (3, 37))
    logits, state = runner.prefill(tokens)
    with torch.no_grad():
        ref_logits, ref_state = tiny_mamba.prefill(tokens)
    scale = ref_logits.abs().max()
    assert (logits - ref_logits).abs().max() / scale < 1e-4
    for name in ref_state:
        assert (state[name] - ref_state[name]).abs().max() / ref_state[name].abs().max() < 1e-4

    # the prefill graph's optional logits_from input: default 0 (every position), fed L - 1 the
    # LM head runs on the last position only; a prompt of whole chunks ends in the prefill graph
    assert manifest["graphs"]["prefill"]["optional_inputs"] == [
        {"name": "logits_from", "shape": [], "dtype": "int64", "default": 0}]
    session = runner.engine.prefill_session
    assert [i.name for i in session.get_overridable_initializers()] == ["logits_from"]
    ids = tokens[:, :32].numpy()
    feeds = dict(zip(runner.engine.prefill_inputs, [ids[:, :16], *runner.engine.init_state(3)]))
    assert session.run(None, feeds)[0].shape == (3, 16, 256)
    assert session.run(None, {**feeds, "logits_from": np.array(15, dtype=np.int64)})[0].shape == (3, 1, 256)
    last, last_state = runner.engine.prefill(ids)  # the engine feeds logits_from = 15 to each chunk
    every, every_state = runner.engine.prefill(ids, all_outputs=True)
    assert last.shape == (3, 256)
    np.testing.assert_allclose(last, every[:, -1], rtol=0, atol=1e-5 * float(np.abs(every).max()))
    for a, b in zip(last_state, every_state):
        np.testing.assert_array_equal(a, b)  # the same graph: the head does not touch the state
    torch_last, _ = runner.prefill_last(tokens[:, :32])  # what edgeseq.generate calls on an artifact
    assert torch_last.shape == (3, 256) and np.array_equal(torch_last.numpy(), last)


def test_onnx_graph_is_valid_with_symbolic_batch(tiny_mamba, tmp_path):
    import onnx

    export_artifact(tiny_mamba, tmp_path / "a", steps=4, prefill=False)
    proto = onnx.load(str(tmp_path / "a" / "step.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"


def test_tvm_llvm_step_matches_pytorch(tiny_mamba, tmp_path):
    out = tmp_path / "tvm"
    manifest = export_artifact(tiny_mamba, out, format="tvm", target="llvm", steps=64, prefill=False)
    v = manifest["verification"]
    assert v["passed"] and v["runtime"] == "tvm-cpu" and v["max_rel_error"] < 1e-4
    assert manifest["target"]["elf_machine"] == "x86_64" or manifest["target"]["arch"] != "x86_64"
    runner = open_artifact(out)
    state = runner.init_state(1)
    ref_state = tiny_mamba.init_state(1)
    for token in [3, 7, 250, 0]:
        x = torch.tensor([token])
        y, state = runner.step(x, state)
        with torch.no_grad():
            ref_y, ref_state = tiny_mamba.step(x, ref_state)
        assert np.allclose(y.numpy(), ref_y.numpy(), atol=1e-4 * float(ref_y.abs().max()))


def test_tvm_prefill_allocates_for_the_batch_it_runs(tmp_path):
    """The batch is symbolic with torch.export's upper bound 65536; planned for that bound, this
    prefill's intermediates would need 65536 × 64 × 128 × 16 floats (34 GB): std::bad_alloc."""
    from edgeseq.models.mamba import Mamba, MambaConfig

    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=256, d_model=64, n_layer=1, d_state=16)).eval()
    manifest = export_artifact(model, tmp_path / "tvm", format="tvm", target="llvm", steps=4, prefill_length=64)
    v = manifest["verification"]
    assert v["passed"] and v["prefill_max_rel_error"] is not None and v["prefill_max_rel_error"] < 1e-4


def test_step_and_prefill_share_one_copy_of_the_weights(tmp_path):
    """Both graphs reference one page-aligned external-data file, each distinct tensor stored once;
    the artifact is about half the size of two self-contained graphs, and an altered byte in the
    shared file is refused like an altered graph."""
    import onnx

    from edgeseq.errors import InputError
    from targets.testing import tiny_mamba

    model = tiny_mamba(d_model=64, n_layer=2, vocab_size=256)
    out = tmp_path / "art"
    manifest = export_artifact(model, out, format="onnx", target="cpu", steps=8, prefill_length=8)
    weights = manifest["weights"]
    assert weights["file"] == "weights.bin" and weights["bytes"] == (out / "weights.bin").stat().st_size
    inline = 0
    for graph in ("step.onnx", "prefill.onnx"):
        proto = onnx.load(str(out / graph), load_external_data=False)
        for tensor in proto.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in tensor.external_data}
                assert info["location"] == "weights.bin" and int(info["offset"]) % 4096 == 0
            else:
                inline += len(tensor.raw_data)
        assert (out / graph).stat().st_size < weights["bytes"] / 2  # the graph, not the weights
    assert inline < 16 * 1024
    params = sum(p.numel() * 4 for p in model.parameters())
    assert params <= weights["bytes"] < 1.5 * params + 4096 * weights["tensors"]  # once, not twice
    assert weights["shared"] >= weights["tensors"] // 2  # the prefill graph found the step graph's tensors
    raw = bytearray((out / "weights.bin").read_bytes())
    raw[100] ^= 1
    (out / "weights.bin").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="differ from manifest"):
        open_artifact(out, threads=1)
