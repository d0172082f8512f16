"""Every benchmark runs (tiny counts); `make bench` gives the real figures."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


# Seven benchmarks, each starting its own servers: about a minute on an idle machine, several
# on a loaded one (pytest-timeout's 120 s default cut it off there).
@pytest.mark.timeout(360)
def test_bench_smoke() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.run", "--smoke"],
                         capture_output=True, text=True, timeout=330, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "grpcrpc cast x256" in out.stdout and "vs ref" in out.stdout
    assert "3 broadcasters" in out.stdout and "grpcrpc, SDK 10 %" in out.stdout
    assert "tracing cost (vs same build, no SDK)" in out.stdout  # issue 18's target table
    assert "resolver start" in out.stdout  # the discovery bench
    assert "mtls" in out.stdout and "Traceback" not in out.stdout + out.stderr
