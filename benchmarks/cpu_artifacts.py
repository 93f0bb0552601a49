"""Verified edgeseq artifacts of the mamba-130m-shaped model, for ``benchmarks/decode_cpu.py``.

    python benchmarks/cpu_artifacts.py --recipes fp32,w8a8-block,w4a8-block [--work-dir DIR]

The model is the same random-weight ``transformers`` ``save_pretrained`` folder that llama.cpp
converts (``benchmarks/llama_cpp.write_hf_folder``), loaded by edgeseq (``load_model``),
quantized with ``quantize_model`` (recipes with static activation scales calibrate on 4 × 128
random token ids: the weights are random, so there is no text distribution to match) and
exported with ``export_artifact`` — each artifact verifies itself against its PyTorch model or is
not written; a refused one is kept beside it (``-refused``) and timed, its rows marked "not
verified". Cached: an artifact folder that exists is reused. A recipe with ``+fused``
(``w8a8-block+fused``) is exported with ``fused_ops`` (edgeseq's fused CPU kernels, built here).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

DEFAULT_RECIPES = ("fp32", "w8a8-block", "w4a8-block")


def log(message: str) -> None:
    sys.stderr.write(f"[cpu_artifacts {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def build(work: Path, recipes, layers: int = 24, prefill_length: int = 64, steps: int = 32) -> dict[str, Path]:
    import torch

    from llama_cpp_peer import write_hf_folder

    work.mkdir(parents=True, exist_ok=True)
    folder = write_hf_folder(work / "llama.cpp" / f"mamba-130m-shape-L{layers}", layers)
    out: dict[str, Path] = {}
    model = None
    for recipe in recipes:  # a recipe name, or a recipe file (named by its stem); "+fused": --fused-ops
        base, fused = recipe.removesuffix("+fused"), recipe.endswith("+fused")
        name = Path(base).stem if base.endswith((".toml", ".json")) else base
        name += "-fused" if fused else ""
        path = work / f"edgeseq-{name}-L{layers}"
        out[recipe] = path
        if (path / "manifest.json").is_file():
            continue
        if model is None:
            from edgeseq.checkpoints import load_model

            model = load_model(folder).model.eval()
        start = time.perf_counter()
        if base == "fp32":
            exported = model
        else:
            from quantize.apply import quantize_model

            gen = torch.Generator().manual_seed(0)
            calib = list(torch.randint(0, model.config.vocab_size, (4, 128), generator=gen).split(2))
            exported, _ = quantize_model(model, base, calib, progress=False)
        from edgeseq.errors import EdgeseqError
        from export.artifact import export_artifact

        refused = path.with_name(path.name + "-refused")
        if (refused / "manifest.json").is_file():
            out[recipe] = refused
            continue
        try:
            export_artifact(exported, path, recipe=name, steps=steps, fused_ops=fused, prefill_length=prefill_length, threads=2,
                            source=str(folder), log=log, keep_failed=refused)
            log(f"{name}: exported and verified in {time.perf_counter() - start:.0f} s")
        except EdgeseqError as exc:
            if not (refused / "manifest.json").is_file():
                raise
            out[recipe] = refused  # timed, and reported as not verified
            log(f"{name}: verification refused it ({str(exc)[:200]}); kept in {refused} for timing only")
    return out


def verified(folder: Path) -> bool:
    import json

    return bool(json.loads((folder / "manifest.json").read_text()).get("verification", {}).get("passed"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default="/tmp/edgeseq-decode-cpu")
    p.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--prefill-length", type=int, default=128)
    args = p.parse_args(argv)
    paths = build(Path(args.work_dir), [r for r in args.recipes.split(",") if r], args.layers, args.prefill_length)
    for recipe, path in paths.items():
        print(recipe, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
