"""Quamba2's pieces as recipe fields: per-SSD-group and sort-and-cluster activation scales, and the
decode-state storage options (per-kind int8/float16, row/head/element scales, percentile clips).

Oracles: brute-force enumeration of partitions for the optimal clustering, ``torch.quantile`` for
per-channel percentiles, the float-state quantized model and a hand-rolled dequantize → step →
quantize for the state, the model's own float64 parallel form for step ≡ forward.
"""

import copy
import itertools
import math

import pytest
import torch

from edgeseq.errors import InputError
from edgeseq.models.mamba import Mamba, MambaConfig
from edgeseq.models.mamba2 import Mamba2, Mamba2Config
from quantize.apply import quantize_model
from quantize.grouping import cluster_sorted, grouped_clips
from quantize.io import load_quantized, save_quantized
from quantize.modules import QuantAct
from quantize.observers import ChannelObserver
from quantize.recipes import QuantRecipe, get_recipe, with_overrides


def _bits_lost(values, clusters):
    return sum(math.log2(max(values[i] for i in c) / values[i]) for c in clusters for i in c)


@pytest.mark.parametrize("seed", range(6))
def test_cluster_sorted_is_the_optimal_partition(seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.rand(7, generator=gen) * 10 + 0.01
    k = 1 + seed % 4
    got = cluster_sorted(values, k)
    assert sorted(i for c in got for i in c) == list(range(7)) and len(got) <= k
    order = torch.argsort(values).tolist()
    vals = values.tolist()
    best = min(
        _bits_lost(vals, [order[a:b] for a, b in zip((0, *cuts), (*cuts, 7))])
        for m in range(k) for cuts in itertools.combinations(range(1, 7), m)
    )
    assert _bits_lost(vals, got) == pytest.approx(best, abs=1e-9)


def test_grouped_clips_cover_every_channel_with_few_values():
    gen = torch.Generator().manual_seed(0)
    clips = torch.rand(2 * 4 * 6, generator=gen) * torch.tensor([1.0, 8.0]).repeat_interleave(24)  # 2 groups
    # per group: one value each, the group's maximum
    per_group = grouped_clips(clips, groups=2, group_scales=True)
    assert torch.equal(per_group[:24], clips[:24].max().expand(24)) and torch.equal(per_group[24:], clips[24:].max().expand(24))
    # sort-and-cluster: 2 groups × 2 head clusters × 3 channel clusters at most, never below a channel's own clip
    clustered = grouped_clips(clips, groups=2, heads=8, group_scales=True, head_clusters=2, channel_clusters=3)
    assert (clustered >= clips).all() and torch.unique(clustered).numel() <= 12
    assert (clustered <= per_group).all() and (clustered < per_group).any()
    # one cluster per head and per channel: every channel keeps its own clip
    assert torch.equal(grouped_clips(clips, groups=2, heads=8, head_clusters=4, channel_clusters=6), clips)
    # nothing asked: one value for the whole tensor
    assert torch.equal(grouped_clips(clips), clips.max().expand(48))


def test_channel_observer_percentile_is_exact_per_channel():
    gen = torch.Generator().manual_seed(0)
    obs = ChannelObserver("x", percentile=99.0, expected_rows=600)
    chunks = [torch.randn(3, 50, 5, generator=gen) * torch.arange(1, 6) for _ in range(4)]
    for chunk in chunks:
        obs.update(chunk)
    data = torch.cat([c.reshape(-1, 5) for c in chunks]).abs()
    expected = torch.quantile(data, 0.99, dim=0)
    assert torch.allclose(obs.channel_clips(), expected, rtol=1e-6)
    # pooled over a set of channels: the percentile of all their values (what one scale for them needs)
    for channels in ([0, 3], [1, 2, 4], list(range(5))):
        pooled = torch.quantile(data[:, channels].reshape(-1), 0.99)
        assert obs.pooled_clip(channels) == pytest.approx(float(pooled), rel=1e-6)
    assert obs.clip() == pytest.approx(float(torch.quantile(data.reshape(-1), 0.99)), rel=1e-6)


@pytest.fixture(scope="module")
def tiny2():
    torch.manual_seed(0)
    model = Mamba2(Mamba2Config(vocab_size=64, d_model=48, n_layer=2, d_state=8, headdim=12, ngroups=2,
                                chunk_size=8)).eval()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 64, (2, 24), generator=gen) for _ in range(2)]
    return model, batches, torch.randint(0, 64, (2, 20), generator=gen)


def test_group_and_cluster_scales_on_mamba2(tiny2, tmp_path):
    model, batches, tokens = tiny2
    recipe = with_overrides(get_recipe("w8a8"), name="q2", act_group_scales=True, act_head_clusters=2,
                            act_channel_clusters=2)
    qmodel, report = quantize_model(model, recipe, batches, progress=False)
    mixer = qmodel.layers[0].mixer
    assert isinstance(mixer.ssm_B, QuantAct) and mixer.ssm_B.scale.shape == (16,)
    assert torch.unique(mixer.ssm_B.scale).numel() == 2  # one scale per SSD group (2 groups of d_state 8)
    assert mixer.ssm_in.scale.shape == (96,) and 2 < torch.unique(mixer.ssm_in.scale).numel() <= 8  # 2 groups × 2 × 2
    row = next(r for r in report["layers"] if r["path"] == "layers.0.mixer.ssm_in")
    assert row["distinct_scales"] == torch.unique(mixer.ssm_in.scale).numel()
    # every channel's clip is covered (per-channel max for x? no: percentile; B and C use max): B, C never clip
    plain, _ = quantize_model(model, "w8a8", batches, progress=False)
    assert (mixer.ssm_B.scale <= plain.layers[0].mixer.ssm_B.scale + 1e-12).all()
    with torch.no_grad():
        q64 = copy.deepcopy(qmodel).double()
        assert (q64.step_sequence(tokens)[0] - q64(tokens)).abs().max().item() <= 1e-10
        ref = model(tokens).log_softmax(-1)
        assert (qmodel(tokens).log_softmax(-1) - ref).abs().max() < 0.1
    save_quantized(qmodel, tmp_path / "q", recipe, report, source="tiny")
    loaded, _ = load_quantized(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(loaded(tokens), qmodel(tokens))


def test_group_scales_leave_mamba1_alone():
    torch.manual_seed(0)
    model = Mamba(MambaConfig(vocab_size=64, d_model=32, n_layer=1, d_state=4)).eval()
    batches = [torch.randint(0, 64, (2, 16))]
    recipe = with_overrides(get_recipe("w8a8"), name="q2", act_group_scales=True, act_head_clusters=4)
    qmodel, _ = quantize_model(model, recipe, batches, progress=False)
    assert all(m.scale.dim() == 0 for m in qmodel.modules() if isinstance(m, QuantAct))


@pytest.mark.parametrize("scales", ["row", "head", "element"])
def test_state_scale_granularity_and_percentile(tiny2, scales):
    model, batches, tokens = tiny2
    recipe = with_overrides(get_recipe("w8a8-s8"), name="s", state_scales=scales)
    qmodel, report = quantize_model(model, recipe, batches, progress=False)
    spec = {s.name: s for s in qmodel.state_spec()}
    buffer = qmodel.state_quant.scale_ssm_0
    shape = spec["ssm_0"].shape  # [H, P, N]
    assert buffer.shape == {"row": shape[:-1], "head": (shape[0], 1, 1), "element": shape}[scales]
    clipped = with_overrides(recipe, state_percentile=99.0)
    qclip, _ = quantize_model(model, clipped, batches, progress=False)
    assert (qclip.state_quant.scale_ssm_0 <= buffer + 1e-12).all() and (qclip.state_quant.scale_ssm_0 < buffer).any()
    with torch.no_grad():
        float_state, _ = quantize_model(model, "w8a8", batches, progress=False)
        _, final = qmodel.step_sequence(tokens)
        logits, new_state = qmodel.step(tokens[:, 0], final)
        ref_logits, ref_state = float_state.step(tokens[:, 0], qmodel.state_quant.dequantize(final, torch.float32))
    assert torch.equal(logits, ref_logits)
    assert all(torch.equal(new_state[k], qmodel.state_quant.quantize(ref_state)[k]) for k in new_state)


def test_split_state_int8_conv_float16_ssm(tiny2, tmp_path):
    model, batches, tokens = tiny2
    recipe = with_overrides(get_recipe("w8a8-s8"), name="split", ssm_state_bits=16)
    qmodel, report = quantize_model(model, recipe, batches, progress=False)
    dtypes = {s.name: s.dtype for s in qmodel.state_spec()}
    assert dtypes == {"conv_0": torch.int8, "ssm_0": torch.float16, "conv_1": torch.int8, "ssm_1": torch.float16}
    assert set(report["state"]["states"]) == {"conv_0", "conv_1"}  # only the int8 ones have scales
    state = qmodel.init_state(2, dtype=torch.float32)  # the export path asks for float32: storage wins
    assert state["ssm_0"].dtype == torch.float16 and state["conv_0"].dtype == torch.int8
    with torch.no_grad():
        stepped, final = qmodel.step_sequence(tokens)
        plain, _ = quantize_model(model, "w8a8", batches, progress=False)
        ref, _ = plain.step_sequence(tokens)
    assert final["ssm_1"].dtype == torch.float16
    assert 0 < (stepped.log_softmax(-1) - ref.log_softmax(-1)).abs().max() < 0.1
    save_quantized(qmodel, tmp_path / "q", recipe, report, source="tiny")
    loaded, _ = load_quantized(tmp_path / "q")
    assert {s.name: s.dtype for s in loaded.state_spec()} == dtypes
    from edgeseq.checkpoints import load_model, model_info

    cfg = model.config
    expected = cfg.n_layer * (cfg.conv_dim * (cfg.d_conv - 1) + 2 * cfg.nheads * cfg.headdim * cfg.d_state)
    assert model_info(load_model(tmp_path / "q"))["state_bytes"] == expected
    # only the SSM state int8, the conv window float32
    ssm_only, _ = quantize_model(model, with_overrides(get_recipe("w8a8-s8"), name="s", conv_state_bits=32), batches,
                                 progress=False)
    assert {s.name: s.dtype for s in ssm_only.state_spec()}["conv_0"] == torch.float32


def test_state_and_group_fields_are_checked():
    with pytest.raises(InputError, match="ssm_state_bits must be"):
        with_overrides(get_recipe("w8a8"), ssm_state_bits=4)
    with pytest.raises(InputError, match="state_scales must be"):
        with_overrides(get_recipe("w8a8"), state_scales="channel")
    with pytest.raises(InputError, match="act_channel_clusters needs act_head_clusters"):
        with_overrides(get_recipe("w8a8"), act_channel_clusters=2)
    with pytest.raises(InputError, match="state_percentile"):
        QuantRecipe.from_dict({"name": "x", "state_percentile": 20.0})
    assert get_recipe("w8a8").bits_of_state("ssm_3") == 0
    split = with_overrides(get_recipe("w8a8-s8"), ssm_state_bits=16)
    assert (split.bits_of_state("conv_0"), split.bits_of_state("ssm_0"), split.bits_of_state("wkv_0")) == (8, 16, 8)
