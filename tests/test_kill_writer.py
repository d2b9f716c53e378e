"""A writer process killed with SIGKILL in the middle of a write never leaves a broken file under the
target name: the name holds the old file (which still loads) or nothing, or, once the write finished,
the complete new file. Partial data stays in a hidden temporary file beside the target."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import rdformat

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import rdformat

    path, n = sys.argv[1], int(sys.argv[2])
    print("open", flush=True)
    with rdformat.Writer(path, codec="raw", metadata={"writer": "child"}) as w:
        for i in range(n):
            w.add(f"t{i}", np.full(1 << 18, i, np.float32))  # 1 MiB per tensor, written slowly
            print(i, flush=True)
            time.sleep(0.02)
    print("done", flush=True)
    time.sleep(60)  # stays alive until killed
    """
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")


def run_and_kill(path: Path, tensors: int, kill_after: str) -> None:
    """Start a writer child, SIGKILL it as soon as it prints ``kill_after``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(tensors)], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        for line in proc.stdout:
            if line.strip() == kill_after:
                break
        else:
            raise AssertionError(f"child exited before printing {kill_after!r}")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def old_file(path: Path) -> bytes:
    rdformat.save({"old": np.arange(1000, dtype=np.int32)}, path, metadata={"writer": "parent"})
    return path.read_bytes()


@pytest.mark.parametrize("kill_after", ["open", "0", "7"])
def test_killed_writer_keeps_the_old_file(tmp_path, kill_after):
    path = tmp_path / "model.rdc"
    before = old_file(path)
    run_and_kill(path, 30, kill_after)
    assert path.read_bytes() == before
    back = rdformat.load(path)
    assert list(back) == ["old"] and np.array_equal(back["old"], np.arange(1000, dtype=np.int32))
    with rdformat.open(path) as f:
        assert f.metadata == {"writer": "parent"}
    # the partial data is in a hidden temporary file beside the target, never under its name
    leftovers = [p for p in tmp_path.iterdir() if p.name != "model.rdc"]
    assert all(p.name.startswith(".model.rdc.") and p.name.endswith(".tmp") for p in leftovers), leftovers


def test_killed_writer_leaves_nothing_when_there_was_no_file(tmp_path):
    path = tmp_path / "model.rdc"
    run_and_kill(path, 30, "5")
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        rdformat.load(path)


def test_kill_after_close_leaves_the_complete_new_file(tmp_path):
    path = tmp_path / "model.rdc"
    old_file(path)
    run_and_kill(path, 3, "done")
    back = rdformat.load(path)
    assert list(back) == ["t0", "t1", "t2"]
    assert all(np.all(back[f"t{i}"] == i) for i in range(3))
    assert not [p for p in tmp_path.iterdir() if p.name != "model.rdc"]  # temp file renamed, not copied
