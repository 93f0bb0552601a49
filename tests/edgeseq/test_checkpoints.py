"""Checkpoints: Hugging Face / state-spaces Mamba loading, native save/load, and bad inputs.

Oracle for parity: ``transformers.MambaForCausalLM`` on its pure-PyTorch path (``mamba_ssm`` and
``causal_conv1d`` are not installed, so transformers falls back to its reference implementation),
on checkpoints this test writes with ``save_pretrained`` and loads through edgeseq's own loader.
Tolerance 1e-4 (the issue's bound) in float32; observed errors are about 1e-7, because both sides
compute the same float32 arithmetic in a different order (chunked scan vs loop).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeseq.checkpoints import (
    LoadedModel,
    load_model,
    model_info,
    read_torch_weights,
    save_model,
)
from edgeseq.errors import InputError
from edgeseq.models.mamba import Mamba, MambaConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

# Two Hugging Face configurations: tied head, power-of-two width; and an untied head with
# projection biases, no conv bias, an odd width, explicit dt rank and a kernel of 3.
HF_CONFIGS = {
    "tied": dict(vocab_size=97, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
    "untied-odd": dict(vocab_size=61, hidden_size=20, state_size=4, num_hidden_layers=3, expand=2, conv_kernel=3,
                       time_step_rank=3, use_bias=True, use_conv_bias=False, tie_word_embeddings=False),
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its default init so parity cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=g)
            if name.endswith("A_log"):
                param.copy_(torch.log(torch.rand(param.shape, generator=g) * 4 + 0.05))
            elif name.endswith("dt_proj.bias"):
                param.copy_(noise - 1.0)
            elif name.endswith(".D") or "norm" in name:
                param.copy_(1 + 0.3 * noise)
            else:
                param.add_(0.05 * noise)


def hf_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.MambaForCausalLM(transformers.MambaConfig(**HF_CONFIGS[kind])).eval()
    _randomize(model, seed)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """``save_pretrained`` folders for both configurations (built once per module)."""
    out = {}
    for kind in HF_CONFIGS:
        folder = tmp_path_factory.mktemp(f"hf-{kind}")
        model = hf_model(kind)
        model.save_pretrained(folder)
        out[kind] = (folder, model)
    return out


def tokens(vocab: int, batch=2, length=19, seed=7) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# parity with transformers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(HF_CONFIGS))
def test_logits_match_transformers(hf_dirs, kind):
    folder, reference = hf_dirs[kind]
    loaded = load_model(folder)
    assert loaded.format == "hf-mamba" and isinstance(loaded.model, Mamba)
    cfg = loaded.model.config
    assert cfg.tie_embeddings == reference.config.tie_word_embeddings
    ids = tokens(cfg.vocab_size)
    with torch.no_grad():
        expected = reference(ids).logits
        parallel = loaded.model(ids)
        stepped, _ = loaded.model.step_sequence(ids)
    assert (parallel - expected).abs().max().item() <= 1e-4
    assert (stepped - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind", list(HF_CONFIGS))
def test_greedy_generation_matches_transformers_cache_path(hf_dirs, kind):
    """HF ``generate`` (greedy, with its recurrent cache) vs edgeseq prefill + ``step``."""
    folder, reference = hf_dirs[kind]
    model = load_model(folder).model
    prompt = tokens(model.config.vocab_size, batch=1, length=6, seed=11)
    new_tokens = 12
    with torch.no_grad():
        out = reference.generate(prompt, max_new_tokens=new_tokens, do_sample=False, min_new_tokens=new_tokens,
                                 use_cache=True, output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=None, eos_token_id=None)
        logits, state = model.prefill(prompt)
        next_logits = logits[:, -1]
        generated, scores = [], []
        for _ in range(new_tokens):
            scores.append(next_logits)
            token = next_logits.argmax(-1)
            generated.append(token)
            next_logits, state = model.step(token, state)
    assert out.sequences[0, prompt.shape[1]:].tolist() == torch.stack(generated, 1)[0].tolist()
    for ours, theirs in zip(scores, out.scores):
        assert (ours - theirs).abs().max().item() <= 1e-4


def test_pytorch_model_bin_and_sharded_safetensors(hf_dirs, tmp_path):
    folder, reference = hf_dirs["untied-odd"]
    ids = tokens(reference.config.vocab_size)
    with torch.no_grad():
        expected = reference(ids).logits
    # weights-only .bin
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((folder / "config.json").read_text())
    torch.save({k: v.clone() for k, v in reference.state_dict().items()}, bin_dir / "pytorch_model.bin")
    # sharded safetensors with an index
    shard_dir = tmp_path / "sharded"
    reference.save_pretrained(shard_dir, max_shard_size="20KB")
    assert (shard_dir / "model.safetensors.index.json").is_file()
    assert len(list(shard_dir.glob("model-*.safetensors"))) > 1
    for path in (bin_dir, shard_dir):
        with torch.no_grad():
            got = load_model(path).model(ids)
        assert (got - expected).abs().max().item() <= 1e-4, path.name


def test_state_spaces_layout_with_padded_vocab(tmp_path):
    """The original ``state-spaces/mamba`` layout: d_model/n_layer/ssm_cfg config, padded vocab,
    ``backbone.embedding.weight`` and a tied ``lm_head.weight`` saved in ``pytorch_model.bin``."""
    vocab, multiple = 93, 8
    padded = 96
    torch.manual_seed(3)
    reference = transformers.MambaForCausalLM(transformers.MambaConfig(
        vocab_size=padded, hidden_size=24, state_size=6, num_hidden_layers=2, expand=2, conv_kernel=4)).eval()
    _randomize(reference, 3)
    reference.tie_weights()
    state = {}
    for key, value in reference.state_dict().items():
        state[key.replace("backbone.embeddings.", "backbone.embedding.")] = value.clone()
    state["lm_head.weight"] = state["backbone.embedding.weight"].clone()
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": 24, "n_layer": 2, "vocab_size": vocab, "ssm_cfg": {"d_state": 6},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": multiple,
    }))
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = load_model(tmp_path)
    assert loaded.format == "state-spaces-mamba"
    assert loaded.model.config.vocab_size == padded
    ids = tokens(vocab)
    with torch.no_grad():
        assert (loaded.model(ids) - reference(ids).logits).abs().max().item() <= 1e-4


def test_save_hf_round_trips_through_transformers(tmp_path):
    from edgeseq.convert.mamba import save_hf

    torch.manual_seed(5)
    model = Mamba(MambaConfig(vocab_size=70, d_model=24, n_layer=2, d_state=4, tie_embeddings=False, bias=True)).eval()
    _randomize(model, 5)
    save_hf(model, tmp_path)
    theirs = transformers.MambaForCausalLM.from_pretrained(tmp_path).eval()
    ids = tokens(70)
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids)).abs().max().item() <= 1e-4
    again = load_model(tmp_path).model
    with torch.no_grad():
        assert (again(ids) - model(ids)).abs().max().item() == 0.0


# --------------------------------------------------------------------------------------------
# native format and info
# --------------------------------------------------------------------------------------------


def test_native_save_and_load_round_trip(tmp_path):
    model = Mamba(MambaConfig(vocab_size=40, d_model=20, n_layer=1, d_state=4)).eval()
    save_model(model, tmp_path / "m", meta={"task": "lm", "dataset": "unit-test"})
    loaded = load_model(tmp_path / "m")
    assert loaded.format == "edgeseq" and loaded.meta["dataset"] == "unit-test"
    ids = tokens(40)
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), model(ids))
    assert load_model(tmp_path / "m" / "model.safetensors").format == "edgeseq"  # a file stands for its folder
    info = model_info(loaded)
    assert info["config"] == model.config.to_dict()
    assert info["params"] == model.num_parameters()
    assert [s["name"] for s in info["state_spec"]] == ["conv_0", "ssm_0"]
    assert info["state_bytes"] == 4 * (40 * 3 + 40 * 4)
    json.dumps(info)  # JSON-able


# --------------------------------------------------------------------------------------------
# bad inputs: one-line InputError naming the file, through the API and the CLI
# --------------------------------------------------------------------------------------------

MARKER_NAME = "pwned-by-pickle"


class _Payload:
    """Unpickling this would create a marker file (os.system), if code in pickles ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hf_folder_copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        (dst / item.name).write_bytes(item.read_bytes())
    return dst


@pytest.fixture(scope="module")
def bad_checkpoints(hf_dirs, tmp_path_factory):
    """name -> (folder, text the error must contain)."""
    root = tmp_path_factory.mktemp("bad")
    good = hf_dirs["tied"][0]
    cases = {}

    truncated = _hf_folder_copy(good, root / "truncated")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = (truncated, "model.safetensors")

    wrong_shape = _hf_folder_copy(good, root / "wrong-shape")
    config = json.loads((wrong_shape / "config.json").read_text())
    config["state_size"] = 5
    (wrong_shape / "config.json").write_text(json.dumps(config))
    cases["wrong-shape"] = (wrong_shape, "A_log")

    no_config = _hf_folder_copy(good, root / "no-config")
    (no_config / "config.json").unlink()
    cases["no-config"] = (no_config, "config")

    wrong_type = _hf_folder_copy(good, root / "wrong-type")
    config = json.loads((wrong_type / "config.json").read_text())
    config["model_type"] = "gpt2"
    (wrong_type / "config.json").write_text(json.dumps(config))
    cases["wrong-type"] = (wrong_type, "gpt2")

    evil = _hf_folder_copy(good, root / "evil-pickle")
    (evil / "model.safetensors").unlink()
    with open(evil / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"backbone.norm_f.weight": _Payload(root / MARKER_NAME)}, handle)
    cases["evil-pickle"] = (evil, "pytorch_model.bin")

    missing_shard = root / "missing-shard"
    hf_dirs["tied"][1].save_pretrained(missing_shard, max_shard_size="20KB")
    sorted(missing_shard.glob("model-*.safetensors"))[-1].unlink()
    cases["missing-shard"] = (missing_shard, "shard")
    return root, cases


BAD_CASES = ["truncated", "wrong-shape", "no-config", "wrong-type", "evil-pickle", "missing-shard"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_checkpoint_is_a_one_line_input_error(bad_checkpoints, case):
    root, cases = bad_checkpoints
    folder, needle = cases[case]
    with pytest.raises(InputError) as info:
        load_model(folder)
    message = str(info.value)
    assert "\n" not in message
    assert needle in message
    assert str(folder) in message
    assert not (root / MARKER_NAME).exists()


def test_pickle_with_code_never_runs(bad_checkpoints, tmp_path):
    root, cases = bad_checkpoints
    marker = tmp_path / "marker"
    path = tmp_path / "model.pt"
    torch.save({"weight": _Payload(marker)}, path)  # zip-format pickle this time
    with pytest.raises(InputError, match="refused to load"):
        read_torch_weights(path)
    with pytest.raises(InputError, match="refused to load"):
        read_torch_weights(cases["evil-pickle"][0] / "pytorch_model.bin")  # plain pickle
    assert not marker.exists() and not (root / MARKER_NAME).exists()


def test_cli_bad_checkpoints_exit_2_with_one_line(bad_checkpoints):
    """One subprocess per case (``python -m edgeseq info PATH``): exit code 2, one stderr line."""
    root, cases = bad_checkpoints
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    for case in BAD_CASES:
        folder, needle = cases[case]
        proc = subprocess.run([sys.executable, "-m", "edgeseq", "info", str(folder)], capture_output=True,
                              text=True, env=env, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (case, proc.stderr)
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (case, proc.stderr)
        assert lines[0].startswith("edgeseq info: error:") and needle in lines[0], (case, lines)
        assert proc.stdout == ""
    assert not (root / MARKER_NAME).exists()


def test_nan_weights_and_untied_head_missing(hf_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _hf_folder_copy(hf_dirs["untied-odd"][0], tmp_path / "nan")
    tensors = load_file(folder / "model.safetensors")
    tensors["backbone.norm_f.weight"][0] = float("nan")
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(InputError, match="NaN"):
        load_model(folder)
    del tensors["lm_head.weight"]
    tensors["backbone.norm_f.weight"][0] = 1.0
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(InputError, match="lm_head.weight"):
        load_model(folder)


def test_loaded_model_type():
    assert LoadedModel.__dataclass_fields__["format"].default == "edgeseq"


def _word_tokenizer(path: Path, words: list[str]) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))


def test_tokenizer_json_is_loaded_and_checked_against_the_vocab(hf_dirs, tmp_path):
    folder = _hf_folder_copy(hf_dirs["tied"][0], tmp_path / "with-tokenizer")
    _word_tokenizer(folder / "tokenizer.json", ["<unk>", "hello", "edge", "world"])
    loaded = load_model(folder)
    assert loaded.tokenizer.kind == "hf"
    assert loaded.tokenizer.encode("hello world") == [1, 3]
    vocab = loaded.model.config.vocab_size
    _word_tokenizer(folder / "tokenizer.json", [f"w{i}" for i in range(vocab + 5)])
    with pytest.raises(InputError, match="tokenizer.json"):
        load_model(folder)


def test_hub_id_goes_through_snapshot_download(hf_dirs, monkeypatch):
    """No network: ``snapshot_download`` is replaced by a stand-in returning a local folder."""
    import huggingface_hub

    folder = hf_dirs["tied"][0]
    calls = []

    def fake_download(repo_id, allow_patterns=None, **_):
        calls.append((repo_id, allow_patterns))
        if repo_id != "edge/tiny-mamba":
            raise OSError("Repository Not Found")
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    loaded = load_model("edge/tiny-mamba")
    assert loaded.format == "hf-mamba" and calls[0][0] == "edge/tiny-mamba"
    assert "*.safetensors" in calls[0][1] and not any(p.endswith(".py") for p in calls[0][1])
    with pytest.raises(InputError, match="not a local path"):
        load_model("edge/missing")
