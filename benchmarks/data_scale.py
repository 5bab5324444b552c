"""Real data at scale (issue 25): start-up time, resident memory and read speed of ``data=parquet`` against the
JSONL reader on the same rows, from 10⁴ to 2·10⁶ rows; and ``python -m r1v data check`` on a large Parquet set,
first and cached run.

    python benchmarks/data_scale.py --sizes 10000 100000 1000000 2000000 --jsonl-max 1000000
    python benchmarks/data_scale.py --sizes --check-size 2000000  # data check only: first run, then cached

Rows: an id, ``<image>\\n`` question, answer and one 16×16 PNG (eight encoded images reused: generation is not the
thing measured). Parquet: shards of ``--shard-rows`` rows, row groups of 1,000, images as bytes in the row; JSONL:
the same rows, images as files in ``images/``. Each measurement runs in a fresh process (``--measure``): start-up is
building the data set plus the first batch of the training loader (``DataPosition.loader``: block shuffle for
Parquet, uniform shuffle for JSONL; batch 32; one loader worker), memory is the main process's RSS above its
imports (after building the data set, and its peak) and the loader worker's own memory (USS) after the timed reads,
speed is samples per second through that one worker.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROW_GROUP = 1000


def pngs() -> list[bytes]:
    from PIL import Image

    out = []
    for k in range(8):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (30 * k, 255 - 30 * k, 7 * k)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def make_parquet(folder: Path, n: int, shard_rows: int) -> Path:
    """``n`` rows in shards of ``shard_rows``, written a shard at a time (pyarrow builds each column in one go)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    images = pngs()
    for s, start in enumerate(range(0, n, shard_rows)):
        idx = range(start, min(n, start + shard_rows))
        table = pa.table({
            "id": pa.array([f"r{i}" for i in idx]),
            "question": pa.array([f"<image>\nHow many shapes are there in picture {i}?" for i in idx]),
            "answer": pa.array([str(i % 10) for i in idx]),
            "images": pa.array([images[i % 8] for i in idx], pa.binary()),
        })  # fmt: skip
        pq.write_table(table, folder / f"train-{s:05d}.parquet", row_group_size=ROW_GROUP)
    (folder / "done").write_text(str(n))
    return folder


def make_jsonl(folder: Path, n: int) -> Path:
    """The same rows as JSONL, the images as files (JSONL names images by path)."""
    path = folder / "train.jsonl"
    if (folder / "done").is_file():
        return path
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for k, data in enumerate(pngs()):
        (folder / "images" / f"{k}.png").write_bytes(data)
    with path.open("w") as f:
        for start in range(0, n, 100_000):
            f.write("".join(json.dumps({"id": f"r{i}", "images": [f"images/{i % 8}.png"], "answer": str(i % 10),
                                        "question": f"<image>\nHow many shapes are there in picture {i}?"}) + "\n"
                            for i in range(start, min(n, start + 100_000))))  # fmt: skip
    (folder / "done").write_text(str(n))
    return path


def status(key: str, pid: str = "self") -> float:
    """A /proc/<pid>/status memory line (VmRSS, VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(kind: str, path: str, workers: int, samples: int) -> dict:
    """In this (fresh) process: start-up, memory and read speed of one data set through the training loader."""
    from r1v.data.datasets import JsonlDataset
    from r1v.data.parquet import ParquetDataset
    from r1v.data.sampler import PadAware
    from r1v.runtime.steps import DataPosition

    base = status("VmRSS")  # torch, pyarrow, PIL imported: what every process pays before any data
    t0 = time.perf_counter()
    ds = ParquetDataset(path) if kind == "parquet" else JsonlDataset(path)
    built = time.perf_counter() - t0
    rss_built = status("VmRSS") - base
    loader = DataPosition(batch_size=32, seed=0).loader(PadAware(ds), list, world=1, rank=0, num_workers=workers)
    batches = iter(loader)
    next(batches)
    startup = time.perf_counter() - t0
    t1, n = time.perf_counter(), 0
    while n < samples:
        n += len(next(batches))
    rate = n / (time.perf_counter() - t1)
    worker_rss = 0.0
    if workers:
        import psutil

        # USS: the worker's own pages (a forked worker shares the parent's until it writes to them; reading a
        # Python list of rows writes their reference counts, so JSONL's rows become the worker's own)
        worker_rss = max(c.memory_full_info().uss for c in psutil.Process().children()) / 2**20
    return {"kind": kind, "rows": len(ds), "build_s": round(built, 2), "startup_s": round(startup, 2),
            "base_mib": round(base), "data_mib": round(rss_built), "main_peak_above_base_mib":
            round(status("VmHWM") - base), "worker_uss_mib": round(worker_rss),
            "samples_per_s_per_worker": round(rate / max(workers, 1))}  # fmt: skip


def fresh(kind: str, path: Path, workers: int, samples: int, timeout: float) -> dict | None:
    """:func:`measure` in a new process (memory from a clean start); None when it ran past ``timeout``."""
    cmd = [sys.executable, __file__, "--measure", kind, str(path), str(workers), str(samples)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        return None
    except subprocess.CalledProcessError as e:
        raise SystemExit(e.stderr[-3000:]) from None
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_check(folder: Path, workers: int) -> list[float]:
    """``python -m r1v data check`` on a Parquet folder: wall seconds of the first (no cache) and a cached run."""
    import shutil

    shutil.rmtree(folder / ".r1v_check", ignore_errors=True)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "r1v", "data", "check", "data=parquet", f"data.train={folder}",
                               "--workers", str(workers)], capture_output=True, text=True)  # fmt: skip
        times.append(round(time.perf_counter() - t0, 1))
        print(proc.stdout.splitlines()[0] if proc.stdout else proc.stderr[-2000:], flush=True)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000, 2_000_000])
    ap.add_argument("--jsonl-max", type=int, default=1_000_000, help="largest size read as JSONL too")
    ap.add_argument("--shard-rows", type=int, default=250_000)
    ap.add_argument("--samples", type=int, default=4000, help="samples read for the speed figure")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a measurement is given up")
    ap.add_argument("--check-size", type=int, default=0, help="time data check on the Parquet set of this size")
    ap.add_argument("--check-workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/r1v_data_scale"))
    ap.add_argument("--measure", nargs=4, metavar=("KIND", "PATH", "WORKERS", "SAMPLES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.measure:
        kind, path, workers, samples = args.measure
        print(json.dumps(measure(kind, path, int(workers), int(samples))), flush=True)
        return 0
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        folder = make_parquet(args.out / f"parquet-{n}", n, args.shard_rows)
        made = time.perf_counter() - t0
        result = fresh("parquet", folder, 1, args.samples, args.timeout)
        rows.append({**(result or {"kind": "parquet", "rows": n, "timed_out": True}), "generate_s": round(made, 1)})
        print(json.dumps(rows[-1]), flush=True)
        if n <= args.jsonl_max:
            t0 = time.perf_counter()
            path = make_jsonl(args.out / f"jsonl-{n}", n)
            made = time.perf_counter() - t0
            result = fresh("jsonl", path, 1, args.samples, args.timeout)
            rows.append({**(result or {"kind": "jsonl", "rows": n, "timed_out": True}), "generate_s": round(made, 1)})
            print(json.dumps(rows[-1]), flush=True)
    if args.check_size:
        folder = make_parquet(args.out / f"parquet-{args.check_size}", args.check_size, args.shard_rows)
        first, cached = time_check(folder, args.check_workers)
        rows.append({"kind": "data check", "rows": args.check_size, "first_s": first, "cached_s": cached})
        print(json.dumps(rows[-1]), flush=True)
    with (args.out / "results.jsonl").open("a") as f:  # every run's rows, appended
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
