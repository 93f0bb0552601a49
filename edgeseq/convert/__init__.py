"""Converters of foreign checkpoint layouts into edgeseq models (one module per family).

* :mod:`edgeseq.convert.mamba` — Hugging Face ``MambaForCausalLM`` folders and ``state-spaces/mamba``;
* :mod:`edgeseq.convert.mamba2` — Hugging Face ``Mamba2ForCausalLM`` folders and ``state-spaces/mamba2``;
* :mod:`edgeseq.convert.spikegpt` — the official SpikeGPT weights;
* :mod:`edgeseq.convert.lmuformer` — the official LMUFormer weights.

Each provides ``CheckpointFormat`` objects that :mod:`edgeseq.checkpoints` finds by name. They sit
above both the models and the checkpoint readers they combine, so neither imports the other back.
"""
