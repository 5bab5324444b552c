"""The long profile of the row/collator fuzz battery (tests/unit/test_fuzz_rows.py runs 40 fixed examples in CI).

    python benchmarks/fuzz_rows.py --examples 5000          # new random examples each run
    python benchmarks/fuzz_rows.py --examples 2000 --fixed  # CI's derandomised stream, longer

A failing example is printed by Hypothesis; add it to the test as an ``@example`` (a fixed regression test).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=5000)
    ap.add_argument("--fixed", action="store_true", help="derandomised, as in CI")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "R1V_FUZZ_EXAMPLES": str(args.examples),
           "R1V_FUZZ_RANDOM": "0" if args.fixed else "1"}  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                            "tests/unit/test_fuzz_rows.py"], cwd=root, env=env)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
