"""Benchmarks of dra-kernels, run from a clone of the repository (not part of the package).

``python -m benchmarks.run``: the timing grid (:mod:`benchmarks.impls`, ``timing``, ``grid``,
``targets``, ``report``, ``plots``, ``environment``); ``python -m benchmarks.gpu_session``:
everything one GPU session measures; ``pytest benchmarks``: pytest-benchmark tests."""
