"""One target registry: export and profile take the same names (issue: two registries misled users)."""

from __future__ import annotations

import json

import pytest

from targets.registry import DEPRECATED_NAMES, HOST_ALIASES, export_target, get_target, targets

REGISTRY = targets(measure_host=False)
BUILDABLE = sorted(name for name, spec in REGISTRY.items() if spec.exportable)


def test_every_device_family_has_a_build():
    kinds = {REGISTRY[name].kind for name in BUILDABLE}
    assert {"cpu", "gpu", "soc"} <= kinds
    assert {"host", "aarch64", "jetson-orin-nano-8gb", "h200"} <= set(BUILDABLE)


@pytest.mark.parametrize("name", BUILDABLE)
def test_export_and_profile_resolve_the_same_entry(name):
    from export.tvm_build import get_target as export_get

    built, profiled = export_get(name), get_target(name, measure_host=False)
    assert built.name == profiled.name == name
    record = built.build_record()
    assert record["name"] == name and record["arch"] in ("x86_64", "aarch64")
    assert bool(built.cuda_arch) == (built.device == "cuda")  # GPU entries embed kernels for their SM


@pytest.mark.parametrize("alias", HOST_ALIASES)
def test_host_aliases(alias):
    assert export_target(alias).name == get_target(alias, measure_host=False).name == "host"


@pytest.mark.parametrize("old", sorted(DEPRECATED_NAMES))
def test_old_export_names_still_work_in_both(old):
    assert export_target(old).name == get_target(old, measure_host=False).name == DEPRECATED_NAMES[old]


def test_cli_export_and_profile_take_the_same_name(tiny_model, tmp_path, capsys, monkeypatch):
    from edgeseq.checkpoints import save_model
    from edgeseq.cli import main

    monkeypatch.setenv("EDGESEQ_CACHE_DIR", str(tmp_path / "cache"))
    save_model(tiny_model, tmp_path / "ckpt")
    out = tmp_path / "art"
    assert main(["export", str(tmp_path / "ckpt"), "--format", "onnx", "--target", "host", "-o", str(out), "--steps", "8",
                 "--no-prefill"]) == 0
    assert json.loads((out / "manifest.json").read_text())["target"]["name"] == "host"
    capsys.readouterr()
    assert main(["profile", str(out), "--target", "host", "--json", "--tokens", "2", "--warmup", "1",
                 "--prompt-len", "0", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == "host"
