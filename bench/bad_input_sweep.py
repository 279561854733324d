"""The bad-input suite through the real entry point: every case of tests/test_bad_input.py as its own
`python -m flywheel.cli` process, as a user would type it. Prints how each ended and the totals.

    python bench/bad_input_sweep.py [--jobs 2]

A case is clean when the process exits 2 with one stderr line naming what the table expects, prints no
traceback and leaves its work directory unchanged. Needs the tiny seed, which it trains first (seconds).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    from flywheel import io, schemas
    from flywheel.config import load_config
    from flywheel.seed_model import train_seed
    from flywheel.tasks import load_task
    from tests.test_bad_input import CASES, PROMPTS, SMOKE, _snapshot

    scratch = Path(tempfile.mkdtemp(prefix="flywheel-sweep-"))
    seed = scratch / "seed"
    train_seed(load_config(SMOKE, [f"seed.path={seed}", "loop.progress=false"]), task=load_task("addition"))

    def run(case):
        work = scratch / case.name.replace(" ", "-")
        work.mkdir()
        shutil.copytree(seed, work / "seed")
        io.write_rows(work / "eval.parquet", [{**p, "id": f"e{p['id']}", "answer": "1"} for p in PROMPTS],
                      schemas.PROMPTS)
        if case.setup:
            case.setup(work)
        before = _snapshot(work)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flywheel.cli", *case.args], cwd=work, capture_output=True,
                              text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(work),
                                                           "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
        lines = done.stderr.strip().splitlines()
        clean = (done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr
                 and all(n in lines[0] for n in case.needles))
        unchanged = _snapshot(work) == before
        return case.name, done.returncode, clean, unchanged, time.perf_counter() - start, (lines or [""])[-1]

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run, CASES))
    for name, code, clean, unchanged, seconds, line in results:
        mark = "ok  " if clean and unchanged else "FAIL"
        print(f"{mark} exit {code} {seconds:5.1f} s  {name}: {line[:110]}")
    clean = sum(r[2] for r in results)
    unchanged = sum(r[3] for r in results)
    print(f"\n{len(results)} cases as separate processes: {clean} one-line errors with exit code 2, "
          f"{sum(r[1] == 2 for r in results)} exit 2, {sum('Traceback' in r[5] for r in results)} tracebacks, "
          f"{unchanged} left every file unchanged")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if clean == unchanged == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
