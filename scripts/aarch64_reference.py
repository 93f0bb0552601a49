"""Write the PyTorch reference stream an artifact is compared with on another machine or emulator.

    python scripts/aarch64_reference.py ARTIFACT_DIR -o REFERENCE.npz [--steps 32] [--batch 1] [--seed 0] [--model M]

Loads the model the artifact was exported from (``manifest.json`` ``model.source``, or ``--model``:
a zoo name or checkpoint/quantized folder), feeds it the seeded inputs verification uses
(``export.graphs.sample_inputs``) for ``--steps`` consecutive steps from its initial state, and saves

* ``inputs`` [B, T] token ids or [B, T, F] frames, in the step graph's input dtype;
* ``outputs`` [B, T, ...] PyTorch step outputs;
* ``init_<state>`` the initial state, ``state_<state>`` [T, B, ...] the state after every step,

which ``scripts/aarch64_artifact_run.py`` (numpy + TVM runtime only) reads. Runs on the host, with
torch and edgeseq.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch


def reference_model(manifest: dict, model_source: str | None):
    """The PyTorch model that was exported, as export verified it (quantized: int8 embedding table)."""
    from edgeseq.checkpoints import load_model

    source = model_source or manifest["model"].get("source")
    if not source:
        sys.exit("the manifest names no model source; pass --model")
    model = load_model(source).model.eval()
    if manifest["model"].get("family") != model.config.family or manifest["model"].get("config") != model.config.to_dict():
        sys.exit(f"{source}: its config differs from the artifact's manifest (re-export, or pass the right --model)")
    bits = manifest.get("embedding_bits")
    if bits:  # export.artifact quantizes the embedding table of quantized models before export
        import copy

        from export.qdq import quantize_embeddings

        model = copy.deepcopy(model).float().eval()
        quantize_embeddings(model, bits)  # the rounded table export stored as integers
    return model


@torch.no_grad()
def write_stream(model, path: str | Path, steps: int, batch: int = 1, seed: int = 0, input_dtype: str | None = None) -> None:
    from export.graphs import sample_inputs

    inputs = sample_inputs(model, batch, steps, seed=seed)
    if input_dtype and model.task != "lm":
        inputs = inputs.to(getattr(torch, input_dtype))
    state = model.init_state(batch)
    arrays = {f"init_{name}": value.numpy() for name, value in state.items()}
    outputs, states = [], {name: [] for name in state}
    for t in range(steps):
        y, state = model.step(inputs[:, t], state)
        outputs.append(y.float())
        for name, value in state.items():
            states[name].append(value.float().numpy())
    arrays.update({f"state_{name}": np.stack(values) for name, values in states.items()})
    np.savez(path, inputs=inputs.numpy(), outputs=torch.stack(outputs, 1).numpy(), **arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description="PyTorch reference stream (.npz) for an exported artifact")
    parser.add_argument("artifact", help="artifact folder (reads manifest.json)")
    parser.add_argument("-o", "--output", required=True, help="the .npz to write")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="model to run instead of the manifest's model.source")
    args = parser.parse_args()
    if args.steps < 1 or args.batch < 1:
        sys.exit("--steps and --batch must be positive")
    manifest = json.loads((Path(args.artifact) / "manifest.json").read_text())
    model = reference_model(manifest, args.model)
    write_stream(model, args.output, args.steps, args.batch, args.seed, manifest["graphs"]["step"]["inputs"][0]["dtype"])
    print(f"wrote {args.output}: {args.steps} steps, batch {args.batch}, seed {args.seed} ({manifest['model']['family']})")


if __name__ == "__main__":
    main()
