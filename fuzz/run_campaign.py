"""Run several atheris harnesses one after the other for fixed times and count the executions.

    python fuzz/run_campaign.py load_bytes=480 by_name=360 ans_decode=300 [--out /tmp/rdc-fuzz]

Each harness runs (on one core, niced) for the given number of seconds; after a crash or timeout the
harness is restarted for the time that remains, and the artifact is kept in OUT/artifacts/. The
corpus of each harness lives in OUT/corpus/HARNESS (seeded from spec/vectors). A summary with the
execution counts is printed and written to OUT/summary.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def run_one(name: str, seconds: float, out: Path, timeout_s: int, rss_mb: int) -> dict:
    corpus = out / "corpus" / name
    art = out / "artifacts"
    logs = out / "logs"
    for d in (corpus, art, logs):
        d.mkdir(parents=True, exist_ok=True)
    import harnesses  # noqa: PLC0415

    for i, s in enumerate(harnesses.get(name).seeds()):
        (corpus / f"seed-{i:04d}").write_bytes(s)
    execs, crashes, starts = 0, [], 0
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 5:
        starts += 1
        log = logs / f"{name}-{starts}.log"
        cmd = [sys.executable, str(HERE / "fuzz_rdc.py"), name, f"-max_total_time={int(left)}",
               f"-timeout={timeout_s}", f"-rss_limit_mb={rss_mb}", "-print_final_stats=1",
               f"-artifact_prefix={art}/{name}-", str(corpus)]
        with open(log, "w") as fh:
            proc = subprocess.run(["nice", "-n", "10", *cmd], stdout=fh, stderr=subprocess.STDOUT,
                                  env={**os.environ, "PYTHONHASHSEED": "0"})
        text = log.read_text(errors="replace")
        m = re.search(r"stat::number_of_executed_units:\s*(\d+)", text)
        if m:
            n = int(m.group(1))
        else:  # crashed: the last status line has the count
            counts = re.findall(r"^#(\d+)\s", text, flags=re.M)
            n = int(counts[-1]) if counts else 0
        execs += n
        if proc.returncode != 0:
            found = re.findall(r"(?:Test unit written to|artifact_prefix.*?)\s*(\S+" + re.escape(name) + r"-\S+)", text)
            crashes.append({"log": str(log), "returncode": proc.returncode, "artifacts": found,
                            "error": next((ln for ln in text.splitlines() if "Error" in ln or "==" in ln), "")})
    return {"harness": name, "seconds": seconds, "executions": execs, "restarts": starts - 1, "crashes": crashes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", nargs="+", help="HARNESS=SECONDS")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("RDC_FUZZ_WORK", "/tmp/rdc-fuzz")))
    parser.add_argument("--timeout", type=int, default=1, help="seconds per input before a hang is reported")
    parser.add_argument("--rss-mb", type=int, default=2048)
    args = parser.parse_args()
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    results = []
    for item in args.plan:
        name, _, secs = item.partition("=")
        res = run_one(name, float(secs), args.out, args.timeout, args.rss_mb)
        results.append(res)
        print(f"{name}: {res['executions']} executions in {secs} s, {len(res['crashes'])} crashes/timeouts",
              flush=True)
    summary = {
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - t0),
        "total_executions": sum(r["executions"] for r in results),
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}))


if __name__ == "__main__":
    main()
