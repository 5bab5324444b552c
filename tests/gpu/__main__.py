"""``python -m tests.gpu [pytest options]``: every GPU test module in a process of its own.

A CUDA device-side assert kills the process's CUDA context, and every later test in that process fails with it.
One process per module keeps such a failure to its own module, so a run reports every real failure.
Exit status: 0 when every module passed (or was skipped), else 1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    here = Path(__file__).resolve().parent
    results = []
    for module in sorted(here.glob("test_*.py")):
        start = time.perf_counter()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(module), *sys.argv[1:]],
                             cwd=here.parents[1])  # fmt: skip
        results.append((module.name, rc, time.perf_counter() - start))
    print("\nGPU test modules, one process each:")
    for name, rc, seconds in results:  # pytest's 5: nothing collected (all deselected)
        print(f"  {'ok  ' if rc in (0, 5) else 'FAIL'} {name} ({seconds:.0f} s, exit {rc})")
    return 0 if all(rc in (0, 5) for _, rc, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
