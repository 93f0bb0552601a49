"""Statistics a reader can act on: intervals on every accuracy figure, paired differences flagged
"no measurable difference" when they are within the noise, and progress with a measured ETA."""

import io
import math

import pytest
import torch

from edgeseq.evaluate import (
    evaluate,
    evaluate_with_interval,
    paired_difference,
    ratio_stderr,
    wilson_interval,
)
from edgeseq.models.mamba import Mamba, MambaConfig
from edgeseq.app.report_writer import comparison, flat_rows, pareto_flags


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    low, high = wilson_interval(200, 200)  # all right: the interval still has width
    assert high == 1.0 and 0.97 < low < 0.99


def test_ratio_stderr_of_equal_blocks_is_zero_and_grows_with_spread():
    assert ratio_stderr([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]) == 0.0
    # mean 2, squared deviations 1 + 1 + 0: sqrt(3/2 · 2) / 3
    assert ratio_stderr([1.0, 3.0, 2.0], [1.0, 1.0, 1.0]) == pytest.approx(1 / math.sqrt(3), rel=1e-12)


def test_lm_interval_matches_evaluate_and_contains_it():
    torch.manual_seed(0)
    model = Mamba(MambaConfig(d_model=16, n_layer=1, d_state=4)).eval()
    plain = evaluate(model, None, "shakespeare", max_bytes=2000, quiet=True)
    rich = evaluate_with_interval(model, None, "shakespeare", max_bytes=2000, block_bytes=256)
    # per-token float32 losses summed in float64 vs summed per chunk: equal to float32 rounding
    assert rich["bits_per_byte"] == pytest.approx(plain["bits_per_byte"], rel=1e-6)
    assert rich["bytes"] == plain["bytes"] == 1999
    assert sum(b[1] for b in rich["blocks"]) == 1999 and len(rich["blocks"]) == 8
    low, high = rich["interval"]
    assert low < rich["bits_per_byte"] < high and rich["stderr"] > 0


def _lm(blocks):
    return {"task": "lm", "blocks": blocks}


def test_paired_difference_flags_noise_and_finds_real_differences():
    base = [[100.0 + i % 3, 64] for i in range(40)]
    same = paired_difference(_lm(base), _lm([list(b) for b in base]))
    assert same["difference"] == 0 and not same["measurable"]
    noisy = [[n + (0.5 if i % 2 else -0.5), b] for i, (n, b) in enumerate(base)]
    assert not paired_difference(_lm(noisy), _lm(base))["measurable"]
    worse = [[n + 5.0 + (0.5 if i % 2 else -0.5), b] for i, (n, b) in enumerate(base)]
    diff = paired_difference(_lm(worse), _lm(base))
    assert diff["measurable"] and diff["difference"] == pytest.approx(5.0 / 64 / math.log(2))
    # different data: no paired comparison at all
    assert paired_difference(_lm(base[:10]), _lm(base)) is None
    # classifiers: per-sample hits
    a = {"task": "classify", "correct_mask": "1" * 199 + "0"}
    b = {"task": "classify", "correct_mask": "1" * 200}
    assert not paired_difference(a, b)["measurable"]
    c = {"task": "classify", "correct_mask": "0" * 100 + "1" * 100}
    assert paired_difference(c, b)["measurable"]


def _row(recipe, metric, nbytes, blocks, bits=8):
    return {"config": {"model": "m", "recipe": recipe}, "status": "ok", "metric": "bits_per_byte",
            "higher_is_better": False, "torch_metric": metric, "model_bytes": nbytes, "weight_bits": bits,
            "eval": _lm(blocks)}


def test_report_rows_say_when_there_is_no_measurable_difference():
    base = [[100.0 + i % 3, 64] for i in range(40)]
    results = [
        _row("fp32", 1.99, 4000, base, bits=32),
        _row("w8a8", 2.0, 1000, [[n + (0.5 if i % 2 else -0.5), b] for i, (n, b) in enumerate(base)]),
        _row("w4a8", 2.3, 1500, [[n + 5, b] for n, b in base], bits=4),
    ]
    rows = flat_rows(results)
    assert rows[0]["vs_float"] is None
    assert rows[1]["vs_float"].endswith("(no measurable difference)")
    assert "no measurable" not in rows[2]["vs_float"] and rows[2]["vs_float"].startswith("+")
    assert comparison(results[2], results)["reference"] == "fp32"
    flags = pareto_flags(results)
    assert flags[id(results[1])] == "front"
    assert flags[id(results[0])] == "front"  # the largest, but the best bits/byte
    assert flags[id(results[2])] == "dominated by w8a8"  # larger and worse than w8a8


def test_progress_lines_name_the_unit_and_stage_and_give_an_eta():
    from edgeseq.app.sweep import SweepProgress, stage

    stream = io.StringIO()
    bar = SweepProgress(4, 1, True, stream=stream, pending=[{"model": "m", "recipe": r} for r in ("w8a8", "w4a8")]
                        + [{"model": "big", "recipe": "fp32"}])
    bar.started({"model": "m", "recipe": "w8a8"})
    stage("export")
    bar.finished({"config": {"model": "m", "recipe": "w8a8"}, "status": "partial", "seconds": 30.0,
                  "stage_errors": {"export": "boom"}})
    bar.finished({"config": {"model": "big", "recipe": "fp32"}, "status": "ok", "seconds": 90.0})
    # the one left is a configuration of m: it counts m's measured 30 s, not the overall mean of 60 s
    assert stream.getvalue().splitlines()[-1] == "[3/4] big fp32: ok in 1m30s; ETA 30s (1m00s per configuration so far, measured)"
    bar.started({"model": "m", "recipe": "w4a8"})
    bar.close()
    stage("ignored after close")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("sweep: 1/4 configurations already done")
    assert lines[1] == "[2/4] m w8a8: started; ETA after the first configuration"
    assert lines[2].startswith("[2/4] m w8a8: export (at ")
    assert lines[3] == ("[2/4] m w8a8: partial in 30s: failed stages export; "
                        "ETA 1m00s (30s per configuration so far, measured)")
    assert lines[5].startswith("[4/4] m w4a8: started; ETA 30s")
    assert "ignored" not in stream.getvalue()
