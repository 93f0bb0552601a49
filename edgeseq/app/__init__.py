"""The application floor: what sits on top of the model core, ``quantize``, ``export`` and ``targets``.

* :mod:`edgeseq.app.api` — the Python front door (``edgeseq.quantize``, ``edgeseq.export``,
  ``edgeseq.profile``);
* :mod:`edgeseq.app.sweep`, :mod:`edgeseq.app.report`, :mod:`edgeseq.app.report_writer` — the
  accuracy-vs-bits sweep and its reports.

The CLI (``edgeseq.cli``) sits above this floor; the core (``edgeseq.streaming``, ``models``,
``checkpoints`` …) below everything. ``tests/test_layers.py`` keeps the direction true.
"""
