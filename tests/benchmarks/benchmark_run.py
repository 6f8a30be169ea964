"""How the benchmark quick-run tests run a benchmark: as a user runs it (`python benchmarks/<name>.py --quick`),
with TMPDIR pointed at a short folder of its own so whatever it leaves behind is seen."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from edgecls_testing import REPO

TARGET = re.compile(r"^target .* -> (met|NOT met|undecided)", re.MULTILINE)


def run_benchmark(script: str, *args, tmp_path: Path, timeout: int = 900) -> str:
    # a short temp dir of its own: a forkserver's socket path under pytest's long tmp_path exceeds AF_UNIX's 108 bytes
    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *map(str, args)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script} exited {proc.returncode}\n{output[-6000:]}"
    assert "Traceback" not in output, output[-6000:]
    assert TARGET.search(proc.stdout), f"{script} printed no `target ... -> met | NOT met` line:\n{proc.stdout}"
    # torch's own compile cache (torchinductor_<user>) and a library's 51-byte session id (.ses, a timestamp and a
    # UUID, written on import in zoo.py's run) are theirs to keep; anything else is the benchmark's
    left = sorted(p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_") and p.name != ".ses")
    shutil.rmtree(scratch, ignore_errors=True)
    assert not left, f"{script} left {left} in the temp dir"
    return output
