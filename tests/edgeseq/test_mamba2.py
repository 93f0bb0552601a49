"""Mamba-2: the SSD parallel form, the step form and checkpoints from elsewhere agree.

Oracles: ``ssd_scan_loop`` (the recurrence as a plain loop over time) for the chunked SSD scan;
``step`` run token by token (``step_sequence``) for ``forward``/``prefill``; ``transformers``'
``Mamba2ForCausalLM`` on its pure-PyTorch path (``mamba_ssm``, ``causal_conv1d`` and ``kernels``
are not installed, so it falls back to its reference ``torch_forward``/cache update), on
checkpoints this module writes with ``save_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from edgeseq.checkpoints import load_model
from edgeseq.errors import InputError
from edgeseq.models import build_model
from edgeseq.models.mamba2 import Mamba2, Mamba2Config, ssd_scan, ssd_scan_loop

VOCAB = 50

# ngroups 1 and > 1, head dims that are not powers of two, untied head with biases, no conv bias,
# conv kernels 1 and 3, dt limits, chunks that do not divide the length
SHAPES = {
    "g1-h16": dict(d_model=32, n_layer=2, d_state=8, headdim=16, chunk_size=8),
    "g3-h10-untied": dict(d_model=30, n_layer=2, d_state=6, headdim=10, ngroups=3, d_conv=3, bias=True,
                          conv_bias=False, tie_embeddings=False, chunk_size=5, dt_limit_min=0.01, dt_limit_max=2.0),
    "g2-h6-kernel1": dict(d_model=12, n_layer=1, d_state=5, headdim=6, ngroups=2, d_conv=1, expand=1, chunk_size=64),
}


def random_mamba2(dtype=torch.float64, seed=0, **overrides) -> Mamba2:
    """A small Mamba-2 with non-trivial A, dt, D and norms (the default init makes many of them 1)."""
    torch.manual_seed(seed)
    model = Mamba2(Mamba2Config(vocab_size=VOCAB, **overrides)).to(dtype).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("A_log"):
                param.copy_(torch.log(torch.rand_like(param) * 4 + 0.05))
            elif name.endswith("dt_bias"):
                param.copy_(torch.randn_like(param))
            elif name.endswith(".D") or "norm" in name:
                param.copy_(1 + 0.3 * torch.randn_like(param))
    return model


def ids(batch=2, length=23, seed=1, vocab=VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# the SSD scan and step ≡ forward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 7, 23, 64])
def test_ssd_scan_equals_the_loop_over_time(chunk):
    g = torch.Generator().manual_seed(0)
    batch, length, heads, p, groups, n = 2, 23, 6, 5, 3, 4
    f64 = dict(dtype=torch.float64, generator=g)
    x, dt = torch.randn(batch, length, heads, p, **f64), torch.rand(batch, length, heads, **f64) * 2
    A, D = -torch.rand(heads, **f64) * 3, torch.randn(heads, **f64)
    B, C = torch.randn(batch, length, groups, n, **f64), torch.randn(batch, length, groups, n, **f64)
    h0 = torch.randn(batch, heads, p, n, **f64)
    y, state = ssd_scan(x, dt, A, B, C, D, h0, chunk=chunk)
    y_ref, state_ref = ssd_scan_loop(x, dt, A, B, C, D, h0)
    assert (y - y_ref).abs().max().item() <= 1e-12
    assert (state - state_ref).abs().max().item() <= 1e-12


def test_ssd_scan_gradients_equal_the_loop():
    """Training backpropagates through the block decomposition: same gradients as the loop."""
    g = torch.Generator().manual_seed(3)
    f64 = dict(dtype=torch.float64, generator=g)
    inputs = [torch.randn(1, 9, 4, 3, **f64), torch.rand(1, 9, 4, **f64), -torch.rand(4, **f64),
              torch.randn(1, 9, 2, 5, **f64), torch.randn(1, 9, 2, 5, **f64), torch.randn(4, **f64)]
    grads = []
    for fn in (lambda *a: ssd_scan(*a, chunk=4), ssd_scan_loop):
        leaves = [t.clone().requires_grad_() for t in inputs]
        y, state = fn(*leaves)
        (y.pow(2).sum() + state.sum()).backward()
        grads.append([t.grad for t in leaves])
    for ours, ref in zip(*grads):
        assert (ours - ref).abs().max().item() <= 1e-10


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_step_equals_forward_float64(shape):
    model = random_mamba2(torch.float64, **shape)
    tokens = ids()
    with torch.no_grad():
        parallel = model(tokens)
        stepped, _ = model.step_sequence(tokens)
    assert parallel.shape == (2, 23, VOCAB)
    assert (parallel - stepped).abs().max().item() <= 1e-10


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_float32_forward_and_step_match_float64(shape):
    """Tolerance as Mamba-1's: ~(T + 2·d)·eps(float32) relative to the logit scale is ~1.5e-5 worst
    case; we allow 5e-5 of the largest |logit|."""
    reference = random_mamba2(torch.float64, **shape)
    model32 = random_mamba2(torch.float32, **shape)
    model32.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    tokens = ids()
    with torch.no_grad():
        exact = reference(tokens)
        parallel = model32(tokens).double()
        stepped = model32.step_sequence(tokens)[0].double()
    scale = max(1.0, exact.abs().max().item())
    assert (parallel - exact).abs().max().item() <= 5e-5 * scale
    assert (stepped - exact).abs().max().item() <= 5e-5 * scale


def test_prefill_in_pieces_then_step_continues_the_sequence():
    model = random_mamba2(torch.float64, **SHAPES["g3-h10-untied"])
    tokens = ids(length=21)
    with torch.no_grad():
        whole, whole_state = model.prefill(tokens)
        first, state = model.prefill(tokens[:, :9])
        second, state = model.prefill(tokens[:, 9:], state)
        _, half_state = model.prefill(tokens[:, :20])
        last, step_state = model.step(tokens[:, 20], half_state)
        _, one_token = model.prefill(tokens[:, :1])  # shorter than the conv kernel
        _, one_step = model.step(tokens[:, 0], model.init_state(2, dtype=torch.float64))
    assert (torch.cat([first, second], 1) - whole).abs().max().item() <= 1e-10
    assert (last - whole[:, -1]).abs().max().item() <= 1e-10
    assert set(state) == set(whole_state) == set(model.state_names())
    for name in whole_state:
        assert (state[name] - whole_state[name]).abs().max().item() <= 1e-10
        assert (step_state[name] - whole_state[name]).abs().max().item() <= 1e-10
        assert (one_token[name] - one_step[name]).abs().max().item() <= 1e-10


def test_state_spec_registry_and_config_checks():
    model = build_model("mamba2", vocab_size=20, d_model=12, n_layer=2, d_state=3, headdim=4, ngroups=3)
    cfg = model.config
    assert isinstance(model, Mamba2) and cfg.nheads == 6 and cfg.conv_dim == 24 + 2 * 3 * 3
    specs = {s.name: s.shape for s in model.state_spec()}
    assert specs == {"conv_0": (42, 3), "ssm_0": (6, 4, 3), "conv_1": (42, 3), "ssm_1": (6, 4, 3)}
    state = model.init_state(3)
    logits, new_state = model.step(torch.zeros(3, dtype=torch.long), state)
    assert logits.shape == (3, 20)
    assert {k: tuple(v.shape[1:]) for k, v in new_state.items()} == specs
    assert Mamba2Config.from_json(cfg.to_json()) == cfg
    with pytest.raises(InputError, match="headdim 5 does not divide"):
        Mamba2Config(d_model=12, headdim=5)
    with pytest.raises(InputError, match="ngroups 4 does not divide"):
        Mamba2Config(d_model=12, headdim=4, ngroups=4)


# --------------------------------------------------------------------------------------------
# parity with transformers' Mamba2ForCausalLM
# --------------------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

# tied head, ngroups 1, head dim 16; untied head with biases, no conv bias, ngroups 3, head dim
# 10 (not a power of two), kernel 3, a dt limit and its own epsilon. Small HF chunk sizes so
# that its chunked path crosses chunks too.
HF_CONFIGS = {
    "tied-g1": dict(vocab_size=97, hidden_size=32, expand=2, head_dim=16, num_heads=4, n_groups=1, state_size=8,
                    num_hidden_layers=2, conv_kernel=4, tie_word_embeddings=True, chunk_size=8),
    "untied-g3-h10": dict(vocab_size=61, hidden_size=30, expand=2, head_dim=10, num_heads=6, n_groups=3,
                          state_size=6, num_hidden_layers=3, conv_kernel=3, use_bias=True, use_conv_bias=False,
                          tie_word_embeddings=False, time_step_limit=(0.01, 3.0), layer_norm_epsilon=1e-4,
                          chunk_size=5),
}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its default init so parity cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=g)
            if name.endswith("A_log"):
                param.copy_(torch.log(torch.rand(param.shape, generator=g) * 4 + 0.05))
            elif name.endswith("dt_bias"):
                param.copy_(noise - 1.0)
            elif name.endswith(".D") or "norm" in name:
                param.copy_(1 + 0.3 * noise)
            else:
                param.add_(0.05 * noise)


def hf_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(**HF_CONFIGS[kind])).eval()
    _randomize(model, seed)
    if model.config.tie_word_embeddings:
        model.tie_weights()
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    out = {}
    for kind in HF_CONFIGS:
        folder = tmp_path_factory.mktemp(f"hf2-{kind}")
        model = hf_model(kind)
        model.save_pretrained(folder)
        out[kind] = (folder, model)
    return out


@pytest.mark.parametrize("kind", list(HF_CONFIGS))
def test_logits_match_transformers(hf_dirs, kind):
    folder, reference = hf_dirs[kind]
    loaded = load_model(folder)
    assert loaded.format == "hf-mamba2" and isinstance(loaded.model, Mamba2)
    cfg = loaded.model.config
    assert cfg.tie_embeddings == reference.config.tie_word_embeddings
    assert (cfg.ngroups, cfg.headdim) == (reference.config.n_groups, reference.config.head_dim)
    tokens = ids(length=19, seed=7, vocab=cfg.vocab_size)
    with torch.no_grad():
        expected = reference(tokens).logits
        parallel = loaded.model(tokens)
        stepped, _ = loaded.model.step_sequence(tokens)
    assert expected.abs().max().item() > 0.1  # not a degenerate comparison
    assert (parallel - expected).abs().max().item() <= 1e-4
    assert (stepped - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind", list(HF_CONFIGS))
def test_greedy_generation_matches_transformers_cache_path(hf_dirs, kind):
    """HF ``generate`` (greedy, its recurrent cache: chunked prefill then single-token updates) vs
    edgeseq prefill + ``step``."""
    folder, reference = hf_dirs[kind]
    model = load_model(folder).model
    prompt = ids(batch=1, length=6, seed=11, vocab=model.config.vocab_size)
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
    assert len(out.scores) == new_tokens
    for ours, theirs in zip(scores, out.scores):
        assert (ours - theirs).abs().max().item() <= 1e-4


def test_state_spaces_layout_loads_as_is(hf_dirs, tmp_path):
    """The ``state-spaces/mamba2-*`` layout: ``backbone.embedding.weight``, ``lm_head.weight`` kept
    though tied, ``ssm_cfg`` config, weights in ``pytorch_model.bin``, vocab padded to a multiple."""
    folder, reference = hf_dirs["tied-g1"]
    cfg = reference.config
    tensors = {k.replace("backbone.embeddings.", "backbone.embedding."): v.clone()
               for k, v in reference.state_dict().items()}
    tensors["lm_head.weight"] = tensors["backbone.embedding.weight"]
    padded = 104  # 97 padded to a multiple of 8: extra rows are never the argmax target here
    extra = padded - cfg.vocab_size
    tensors["backbone.embedding.weight"] = torch.cat([tensors["backbone.embedding.weight"], torch.zeros(extra, cfg.hidden_size)])
    tensors["lm_head.weight"] = tensors["backbone.embedding.weight"]
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": cfg.hidden_size, "d_intermediate": 0, "n_layer": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
        "ssm_cfg": {"layer": "Mamba2", "d_state": cfg.state_size, "d_conv": cfg.conv_kernel, "expand": cfg.expand,
                    "headdim": cfg.head_dim, "ngroups": cfg.n_groups},
        "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
        "pad_vocab_size_multiple": 8, "tie_embeddings": True,
    }))
    loaded = load_model(tmp_path)
    assert loaded.format == "state-spaces-mamba2" and loaded.model.config.vocab_size == padded
    tokens = ids(length=15, seed=5, vocab=cfg.vocab_size)
    with torch.no_grad():
        expected = reference(tokens).logits
        ours = loaded.model(tokens)[..., :cfg.vocab_size]
    assert (ours - expected).abs().max().item() <= 1e-4


def test_mamba1_state_spaces_format_leaves_mamba2_alone(tmp_path):
    from edgeseq.convert import mamba as mamba_convert, mamba2 as mamba2_convert

    (tmp_path / "config.json").write_text(json.dumps({"d_model": 8, "n_layer": 1, "vocab_size": 16,
                                                      "ssm_cfg": {"layer": "Mamba2"}}))
    assert not mamba_convert.detect_state_spaces(tmp_path)
    assert mamba2_convert.detect_state_spaces(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 8, "n_layer": 1, "vocab_size": 16,
                                                      "ssm_cfg": {"layer": "Mamba2", "D_has_hdim": True}}))
    with pytest.raises(InputError, match="D_has_hdim"):
        load_model(tmp_path)


def test_save_hf_round_trips_through_transformers(tmp_path):
    from edgeseq.convert.mamba2 import save_hf

    model = random_mamba2(torch.float32, **SHAPES["g3-h10-untied"])
    save_hf(model, tmp_path)
    theirs = transformers.Mamba2ForCausalLM.from_pretrained(tmp_path).eval()
    tokens = ids(length=17, seed=2)
    with torch.no_grad():
        assert (theirs(tokens).logits - model(tokens)).abs().max().item() <= 1e-4
    reloaded = load_model(tmp_path).model
    # the chunk length is a compute setting, not read back from Hugging Face configs
    assert dataclasses.replace(reloaded.config, chunk_size=model.config.chunk_size) == model.config


def test_zoo_model_step_equals_forward_on_text():
    """The trained zoo model (when present), on real text; oracle: ``forward`` (float64 1e-9,
    float32 with the tolerance of the float32 test above, relative to the logit scale)."""
    from edgeseq.checkpoints import zoo_names

    if "mamba2-shakespeare" not in zoo_names():
        pytest.skip("zoo model mamba2-shakespeare not present")
    loaded = load_model("mamba2-shakespeare")
    assert isinstance(loaded.model, Mamba2)
    text = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, and Juliet is the sun."
    tokens = torch.tensor([loaded.tokenizer.encode(text)])
    model32 = loaded.model.eval()
    with torch.no_grad():
        parallel32 = model32(tokens)
        stepped32, _ = model32.step_sequence(tokens)
        model64 = model32.double()
        parallel64 = model64(tokens)
        stepped64, _ = model64.step_sequence(tokens)
    assert (stepped64 - parallel64).abs().max().item() <= 1e-9
    scale = parallel64.abs().max().item()
    assert (parallel32.double() - parallel64).abs().max().item() <= 5e-5 * scale
    assert (stepped32.double() - parallel64).abs().max().item() <= 5e-5 * scale
    # a trained model: the next byte after "ROMEO:\n" is predicted far better than uniform (8 bits)
    nats = torch.nn.functional.cross_entropy(parallel64[0, :-1], tokens[0, 1:]).item()
    assert nats / math.log(2) < 4.0
