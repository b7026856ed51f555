"""Benchmarks of dra-kernels: the runner (``python -m benchmarks.run``), the one-shot GPU check
(``python -m benchmarks.gpu_check``) and pytest-benchmark tests (``pytest benchmarks``)."""
