"""The target registry: device specs as data, with the source of every figure.

Built-in targets live in ``targets/specs/*.json`` (one file per group: Jetson modules, NVIDIA
GPUs, neuromorphic chips). The host CPU is detected at run time (model, cores, ISA features from
``/proc/cpuinfo``) and its memory bandwidth is *measured* (``targets.bandwidth``, cached).

Users add or override targets with a JSON or TOML file of the same shape (``{"targets": [...]}``,
or TOML ``[[targets]]`` tables), passed as ``--targets-file`` or named by the environment variable
``EDGESEQ_TARGETS_FILE`` (several files separated by ``:``). Every entry is validated: a wrong
field is one ``InputError`` naming the file, the entry and the fix.

``targets()`` returns the registry, a plain dict ``name -> TargetSpec``. It is the one list of
devices: ``edgeseq export --target NAME`` builds for an entry (its ``tvm_target``, ``arch``,
``cuda_arch`` and cross compiler) and ``edgeseq profile --target NAME`` measures against it, with
the same names. ``exportable`` says whether an entry has a build recipe (neuromorphic chips are
simulated, not compiled for).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeseq.errors import InputError
from targets.hostinfo import host_arch, read_cpuinfo

SPECS_DIR = Path(__file__).parent / "specs"
ENV_TARGETS_FILE = "EDGESEQ_TARGETS_FILE"
HOST = "host"
HOST_ALIASES = ("cpu", "local", "llvm")
# names `edgeseq export --target` used before the registry was one list: old name -> entry
DEPRECATED_NAMES = {
    "jetson-orin-nano": "jetson-orin-nano-8gb",
    "cuda-sm80": "a100",
    "cuda-sm90": "h100",
}

KINDS = ("cpu", "gpu", "soc", "neuromorphic")
DEVICES = ("cpu", "cuda", None)
RUNTIMES = ("torch", "torch-cudagraph", "onnxruntime", "tvm", "tvm-rpc", "spiking-sim")
# figures that must carry a source when they are given
CITED_FIGURES = ("memory_bandwidth_gbs", "peak_int8_tops", "peak_fp16_tflops", "typical_power_w", "memory_gb")


@dataclass
class TargetSpec:
    """One device: what it is, how fast its memory and arithmetic are, what runs on it.

    Units: GB = 1e9 bytes, GB/s, TOPS/TFLOPS = 1e12 ops/s (dense, no sparsity), watts.
    ``sources`` maps each given figure to the document it comes from.
    """

    name: str
    kind: str  # cpu | gpu | soc | neuromorphic
    description: str = ""
    device: str | None = "cpu"  # where the runtimes place tensors: cpu | cuda | None (simulated)
    memory_gb: float | None = None
    memory_bandwidth_gbs: float | None = None
    peak_int8_tops: float | None = None
    peak_fp16_tflops: float | None = None
    typical_power_w: float | None = None
    runtimes: list[str] = field(default_factory=list)
    tvm_target: str | dict | None = None  # a TVM tag name or a JSON-style target dict
    sources: dict[str, str] = field(default_factory=dict)
    energy_table: str | None = None  # device table of the spiking simulator (neuromorphic targets)
    energy_pj: dict[str, float] = field(default_factory=dict)
    features: list[str] = field(default_factory=list)  # ISA features (CPUs)
    cores: int | None = None
    # what export needs to build for it
    arch: str | None = None  # ELF machine of host code: x86_64 | aarch64 (None: nothing to build)
    cuda_arch: str | None = None  # sm_87 ... when builds embed CUDA kernels
    cross_compiler: str | None = None  # C++ cross compiler export_library links with
    cross_compiler_package: str | None = None  # Debian package that provides it
    aliases: list[str] = field(default_factory=list)
    origin: str = "builtin"  # builtin | detected | the user file it came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def exportable(self) -> bool:
        """Has a build recipe: ``edgeseq export --target NAME`` can compile for it."""
        return self.arch is not None and self.tvm_target is not None

    @property
    def runs_here(self) -> bool:
        """A TVM build for it runs on this machine (host CPU code, no GPU kernels)."""
        return not self.cuda_arch and self.arch == host_arch()

    def build_record(self) -> dict[str, Any]:
        """What an artifact's manifest records about the target it was built for."""
        return {"name": self.name, "tvm_target": self.tvm_target, "arch": self.arch,
                "cuda_arch": self.cuda_arch or None, "description": self.description}

    @property
    def bandwidth_bytes_per_s(self) -> float | None:
        return None if self.memory_bandwidth_gbs is None else self.memory_bandwidth_gbs * 1e9


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

_FIELD_NAMES = {f.name for f in fields(TargetSpec)}
_NUMBER_FIELDS = ("memory_gb", "memory_bandwidth_gbs", "peak_int8_tops", "peak_fp16_tflops", "typical_power_w")


def spec_from_dict(data: Any, origin: str = "builtin", where: str = "") -> TargetSpec:
    """Validate one target entry and build its spec; errors name ``where`` and the field."""
    where = where or origin
    if not isinstance(data, dict):
        raise InputError(f"{where}: each target must be an object/table, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"{where}: a target needs a non-empty string 'name'")
    at = f"{where}: target {name!r}"
    unknown = sorted(set(data) - _FIELD_NAMES - {"origin"})
    if unknown:
        raise InputError(f"{at}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELD_NAMES - {'origin'}))}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise InputError(f"{at}: 'kind' must be one of {', '.join(KINDS)} (got {kind!r})")
    values = dict(data)
    for key in _NUMBER_FIELDS:
        value = values.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InputError(f"{at}: {key!r} must be a positive number (got {value!r})")
        values[key] = float(value)
    device = values.get("device", "cpu" if kind == "cpu" else "cuda" if kind in ("gpu", "soc") else None)
    if device not in DEVICES:
        raise InputError(f"{at}: 'device' must be 'cpu', 'cuda' or null (got {device!r})")
    values["device"] = device
    runtimes = values.get("runtimes", [])
    if not isinstance(runtimes, list) or any(r not in RUNTIMES for r in runtimes):
        raise InputError(f"{at}: 'runtimes' must be a list drawn from {', '.join(RUNTIMES)} (got {runtimes!r})")
    tvm_target = values.get("tvm_target")
    if tvm_target is not None and not (isinstance(tvm_target, str) or (isinstance(tvm_target, dict) and "kind" in tvm_target)):
        raise InputError(f"{at}: 'tvm_target' must be a TVM tag name or a dict with a 'kind' (got {tvm_target!r})")
    for key in ("arch", "cuda_arch", "cross_compiler", "cross_compiler_package"):
        if values.get(key) is not None and not isinstance(values[key], str):
            raise InputError(f"{at}: {key!r} must be a string (got {values[key]!r})")
    if values.get("arch") not in (None, "x86_64", "aarch64"):
        raise InputError(f"{at}: 'arch' must be 'x86_64' or 'aarch64' (got {values['arch']!r})")
    if isinstance(tvm_target, dict) and tvm_target.get("kind") == "cuda" and not values.get("cuda_arch"):
        values["cuda_arch"] = tvm_target.get("arch")
    aliases = values.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise InputError(f"{at}: 'aliases' must be a list of names")
    sources = values.get("sources", {})
    if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
        raise InputError(f"{at}: 'sources' must map figure names to citation strings")
    uncited = [k for k in CITED_FIGURES if values.get(k) is not None and k not in sources]
    if uncited and origin == "builtin":
        raise InputError(f"{at}: figure(s) {', '.join(uncited)} have no entry in 'sources'")
    for key in ("energy_pj",):
        table = values.get(key, {})
        if not isinstance(table, dict) or not all(isinstance(v, (int, float)) and v >= 0 for v in table.values()):
            raise InputError(f"{at}: {key!r} must map operation names to non-negative numbers")
    values["origin"] = origin
    return TargetSpec(**values)


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise InputError(f"{path}: targets file not found (set --targets-file or {ENV_TARGETS_FILE} to an existing .json/.toml file)")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise InputError(f"{path}: not valid {kind} ({str(exc).splitlines()[0][:160]})") from None
    if isinstance(data, list):
        entries = data
    elif isinstance(data, dict) and isinstance(data.get("targets"), list):
        entries = data["targets"]
    else:
        raise InputError(f"{path}: expected {{\"targets\": [...]}} (JSON) or [[targets]] tables (TOML)")
    return entries


def load_file(path: str | Path, origin: str | None = None) -> dict[str, TargetSpec]:
    """Targets of one JSON/TOML file, validated."""
    path = Path(path).expanduser()
    origin = origin or str(path)
    specs: dict[str, TargetSpec] = {}
    for index, entry in enumerate(_read_file(path)):
        spec = spec_from_dict(entry, origin=origin, where=f"{path} (entry {index})")
        if spec.name in specs:
            raise InputError(f"{path}: target {spec.name!r} is defined twice")
        specs[spec.name] = spec
    return specs


def builtin_targets() -> dict[str, TargetSpec]:
    specs: dict[str, TargetSpec] = {}
    for path in sorted(SPECS_DIR.glob("*.json")):
        specs.update(load_file(path, origin="builtin"))
    return specs


# --------------------------------------------------------------------------------------------
# the host CPU
# --------------------------------------------------------------------------------------------

def estimate_cpu_peaks(cores: int, mhz: float | None, features: list[str]) -> tuple[float | None, float | None]:
    """(int8 TOPS, fp32 TFLOPS) upper bounds from the ISA and clock (an estimate, cited as such).

    Per core per cycle: two FMA ports × lanes × 2 flops (AVX2: 8 fp32 lanes, AVX-512: 16); int8
    through ``vpmaddubsw`` chains doubles that, VNNI (``vpdpbusd``) quadruples it.
    """
    if not mhz:
        return None, None
    lanes = 16 if "avx512f" in features else 8 if "avx2" in features else 4
    fp32_per_cycle = 2 * lanes * 2 if "fma" in features or "avx512f" in features or "asimd" in features else lanes * 2
    int8_factor = 4 if {"avx512_vnni", "avx_vnni", "asimddp"} & set(features) else 2
    fp32 = cores * mhz * 1e6 * fp32_per_cycle / 1e12
    return round(fp32 * int8_factor, 3), round(fp32, 3)


def host_target(measure: bool = True, threads: int | None = None) -> TargetSpec:
    """The machine edgeseq runs on: detected CPU, measured (cached) memory bandwidth."""
    info = read_cpuinfo()
    int8_tops, fp32_tflops = estimate_cpu_peaks(info["cores"], info["mhz"], info["features"])
    bandwidth = None
    sources = {
        "cores": "detected: os.sched_getaffinity",
        "features": "detected: /proc/cpuinfo flags",
    }
    if measure:
        from targets.bandwidth import host_bandwidth

        measured = host_bandwidth(threads=threads)
        bandwidth = measured["read_gbs"]
        sources["memory_bandwidth_gbs"] = (
            f"measured: read bandwidth of a {measured['bytes'] // 2**20} MiB reduction, best of "
            f"{measured['repeats']}, {measured['threads']} thread(s) (targets.bandwidth; cached {measured['cached']})"
        )
    if int8_tops is not None:
        sources["peak_int8_tops"] = "estimate: cores x clock x int8 ops/cycle of the ISA (targets.registry.estimate_cpu_peaks)"
        sources["peak_fp16_tflops"] = "estimate: fp32 FMA throughput (no native fp16 arithmetic assumed)"
    return TargetSpec(
        name=HOST,
        kind="cpu",
        device="cpu",
        description=f"this machine: {info['model']} ({info['cores']} cores, {info['machine']})",
        memory_bandwidth_gbs=None if bandwidth is None else round(bandwidth, 2),
        peak_int8_tops=int8_tops,
        peak_fp16_tflops=fp32_tflops,
        runtimes=["torch", "onnxruntime", "tvm", "tvm-rpc"],
        tvm_target="llvm",
        sources=sources,
        features=info["features"],
        cores=info["cores"],
        arch=host_arch(),
        aliases=list(HOST_ALIASES),
        origin="detected",
    )


# --------------------------------------------------------------------------------------------
# the registry
# --------------------------------------------------------------------------------------------


def user_files(targets_file: str | Path | None = None) -> list[Path]:
    files = [Path(p) for p in os.environ.get(ENV_TARGETS_FILE, "").split(os.pathsep) if p]
    if targets_file:
        files.append(Path(targets_file))
    return files


def targets(targets_file: str | Path | None = None, measure_host: bool = True) -> dict[str, TargetSpec]:
    """The registry ``name -> TargetSpec``: host, built-ins, then user files (which may override)."""
    registry = {HOST: host_target(measure=measure_host)}
    registry.update(builtin_targets())
    for path in user_files(targets_file):
        registry.update(load_file(path))
    return registry


def resolve_name(name: str, registry: dict[str, TargetSpec] | None = None) -> str:
    """The registry name for ``name``: itself, an entry's alias, or a deprecated export name
    (said once on stderr)."""
    if name in HOST_ALIASES:
        return HOST
    if name in DEPRECATED_NAMES and (registry is None or name not in registry):
        new = DEPRECATED_NAMES[name]
        if name not in _WARNED:
            _WARNED.add(name)
            print(f"edgeseq: target {name!r} is now called {new!r} (one registry for export and profile); "
                  "the old name will be removed", file=sys.stderr)
        return new
    for spec in (registry or {}).values():
        if name in spec.aliases:
            return spec.name
    return name


_WARNED: set[str] = set()


def get_target(name: str, targets_file: str | Path | None = None, measure_host: bool = True) -> TargetSpec:
    """One target by name or alias (``host`` = this machine); unknown names list the known ones."""
    name = resolve_name(name)
    if name == HOST and not user_files(targets_file):
        return host_target(measure=measure_host)
    registry = targets(targets_file, measure_host=measure_host and name == HOST)
    name = resolve_name(name, registry)
    if name not in registry:
        raise InputError(f"unknown target {name!r}; known: {', '.join(registry)} (`edgeseq targets` lists them; "
                         "add your own with --targets-file)")
    return registry[name]


def gpu_target_for(device_name: str, registry: dict[str, TargetSpec] | None = None) -> str | None:
    """The registry's CUDA entry for a GPU as the driver names it ("NVIDIA H200" -> ``h200``, "NVIDIA
    H100 PCIe" -> ``h100-pcie``, "NVIDIA GeForce RTX 4090" -> ``rtx-4090``): the entry whose
    description names the board, the most specific first; None for a board the registry lacks."""
    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z0-9]+", text.lower().replace("-", " "))) - {"nvidia", "geforce", "gb", "tensor", "core"}

    board = words(device_name)
    best, best_score = None, 0
    for spec in (registry or builtin_targets()).values():
        if spec.device != "cuda" or spec.kind != "gpu":
            continue
        name = words(spec.name)
        if not name <= board:
            continue  # every word of the entry's name is on the board ("h100" and "pcie" for h100-pcie)
        score = len(name)
        if score > best_score:
            best, best_score = spec.name, score
    return best


def local_gpu_target(registry: dict[str, TargetSpec] | None = None) -> str | None:
    """The registry entry of the first visible CUDA GPU, or None (no GPU, no torch, an unknown board)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return None
    if not torch.cuda.is_available():
        return None
    return gpu_target_for(torch.cuda.get_device_name(0), registry)


def export_target(name: str, targets_file: str | Path | None = None) -> TargetSpec:
    """A registry entry that export can build for; one line naming the buildable ones otherwise."""
    spec = get_target(name, targets_file, measure_host=False)
    if not spec.exportable:
        buildable = [n for n, s in targets(targets_file, measure_host=False).items() if s.exportable]
        raise InputError(f"target {spec.name!r} ({spec.kind}) has nothing to compile for"
                         f"{' (its models run in the spiking simulator: edgeseq simulate)' if spec.kind == 'neuromorphic' else ''}; "
                         f"export targets: {', '.join(buildable)}")
    return spec


__all__ = [
    "ENV_TARGETS_FILE",
    "HOST",
    "TargetSpec",
    "builtin_targets",
    "estimate_cpu_peaks",
    "export_target",
    "get_target",
    "host_target",
    "load_file",
    "read_cpuinfo",
    "resolve_name",
    "spec_from_dict",
    "targets",
]
