"""``python -m benchmarks.run``: the benchmark runner of :mod:`dra_kernels.benchmark`.

Examples::

    python -m benchmarks.run --quick --out out/bench      # a reduced grid, seconds on CPU
    python -m benchmarks.run --out out/bench              # the full grid (CUDA) or the CPU grid
    python -m benchmarks.run --plot-from out/bench/bench.json --out out/bench
"""

from __future__ import annotations

import sys

from dra_kernels.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
