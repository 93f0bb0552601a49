"""The target registry: built-in specs (every figure cited), host detection, user files, CLI."""

import json

import pytest

from edgeseq.errors import InputError
from targets.registry import (
    ENV_TARGETS_FILE,
    builtin_targets,
    estimate_cpu_peaks,
    get_target,
    load_file,
    read_cpuinfo,
    spec_from_dict,
    targets,
)

REQUIRED = [
    "jetson-orin-nano-8gb", "jetson-agx-orin-32gb", "jetson-agx-orin-64gb", "h100", "h200", "a100", "l4",
    "rtx-4090", "loihi2", "spinnaker2", "digital-45nm",
]


def test_builtin_targets_are_complete_and_cited():
    registry = builtin_targets()
    for name in REQUIRED:
        assert name in registry, name
    for spec in registry.values():
        assert spec.origin == "builtin"
        for key in ("memory_bandwidth_gbs", "peak_int8_tops", "peak_fp16_tflops", "typical_power_w", "memory_gb"):
            if getattr(spec, key) is not None:
                assert spec.sources.get(key), f"{spec.name}.{key} has no source"
        if spec.kind in ("gpu", "soc"):
            assert spec.memory_bandwidth_gbs and spec.peak_int8_tops and spec.peak_fp16_tflops and spec.tvm_target
            assert spec.device == "cuda"
    assert registry["jetson-orin-nano-8gb"].tvm_target == "nvidia/jetson-orin-nano"
    assert registry["h100"].tvm_target == {"kind": "cuda", "arch": "sm_90"}


def test_cpuinfo_parsing_and_peak_estimate():
    text = "processor\t: 0\nmodel name\t: Test CPU 9000\ncpu MHz\t\t: 2000.0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    info = read_cpuinfo(text)
    assert info["model"] == "Test CPU 9000" and info["mhz"] == 2000.0
    assert info["features"] == ["sse4_2", "avx", "avx2", "fma"]
    int8, fp32 = estimate_cpu_peaks(2, 2000.0, info["features"])
    # 2 cores x 2 GHz x (2 FMA ports x 8 lanes x 2 flops) = 128 GFLOP/s; int8 without VNNI = 2x
    assert fp32 == pytest.approx(0.128) and int8 == pytest.approx(0.256)
    assert estimate_cpu_peaks(2, None, []) == (None, None)


def test_host_target_measures_and_caches_bandwidth(small_bandwidth):
    first = get_target("host")
    assert first.kind == "cpu" and first.origin == "detected" and first.cores >= 1
    assert first.memory_bandwidth_gbs > 0
    assert "measured" in first.sources["memory_bandwidth_gbs"]
    assert (small_bandwidth / "host_bandwidth.json").is_file()
    again = get_target("host")
    assert again.memory_bandwidth_gbs == first.memory_bandwidth_gbs  # from the cache
    assert "cached True" in again.sources["memory_bandwidth_gbs"]


def test_user_files_json_and_toml(tmp_path, monkeypatch):
    board = {"name": "my-board", "kind": "soc", "memory_bandwidth_gbs": 51.2, "peak_int8_tops": 6,
             "runtimes": ["onnxruntime", "tvm-rpc"], "tvm_target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}}
    json_file = tmp_path / "boards.json"
    json_file.write_text(json.dumps({"targets": [board]}))
    toml_file = tmp_path / "boards.toml"
    toml_file.write_text('[[targets]]\nname = "tiny-mcu"\nkind = "cpu"\nmemory_bandwidth_gbs = 0.4\n'
                         'runtimes = ["tvm-rpc"]\ntvm_target = "llvm"\n')
    spec = load_file(json_file)["my-board"]
    assert spec.memory_bandwidth_gbs == 51.2 and spec.origin == str(json_file) and spec.device == "cuda"
    monkeypatch.setenv(ENV_TARGETS_FILE, str(toml_file))
    registry = targets(json_file, measure_host=False)
    assert "tiny-mcu" in registry and "my-board" in registry and "h100" in registry
    assert get_target("tiny-mcu", measure_host=False).memory_bandwidth_gbs == 0.4


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"kind": "gpu"}, "non-empty string 'name'"),
        ({"name": "x", "kind": "fpga"}, "'kind' must be one of"),
        ({"name": "x", "kind": "gpu", "memory_bandwidth_gbs": -1}, "positive number"),
        ({"name": "x", "kind": "gpu", "memory_bandwidth_gbs": "fast"}, "positive number"),
        ({"name": "x", "kind": "gpu", "bandwith": 3}, "unknown field(s) bandwith"),
        ({"name": "x", "kind": "gpu", "runtimes": ["tensorrt"]}, "'runtimes' must be a list"),
        ({"name": "x", "kind": "gpu", "tvm_target": {"arch": "sm_90"}}, "'tvm_target' must be"),
        ({"name": "x", "kind": "cpu", "device": "tpu"}, "'device' must be"),
    ],
)
def test_bad_entries_are_one_line_input_errors(entry, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        spec_from_dict(entry, origin="user.json", where="user.json (entry 0)")
    assert "\n" not in str(info.value) and "user.json" in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(InputError, match="targets file not found"):
        load_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_file(broken)
    shape = tmp_path / "shape.json"
    shape.write_text('{"boards": []}')
    with pytest.raises(InputError, match='expected'):
        load_file(shape)
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([{"name": "a", "kind": "cpu"}, {"name": "a", "kind": "cpu"}]))
    with pytest.raises(InputError, match="defined twice"):
        load_file(twice)
    with pytest.raises(InputError, match="unknown target 'nope'"):
        get_target("nope", measure_host=False)


def test_cli_targets_json(capsys, small_bandwidth, tmp_path):
    from edgeseq.cli import main

    assert main(["targets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = [r["name"] for r in rows]
    assert names[0] == "host" and set(REQUIRED) <= set(names)
    assert all({"kind", "memory_bandwidth_gbs", "peak_int8_tops", "sources", "runtimes", "tvm_target"} <= set(r) for r in rows)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "b", "kind": "gpu", "peak_int8_tops": 0}]))
    assert main(["targets", "--targets-file", str(bad)]) == 2
    assert "positive number" in capsys.readouterr().err
    assert main(["targets", "--name", "l4"]) == 0
    assert "NVIDIA L4" in capsys.readouterr().out
