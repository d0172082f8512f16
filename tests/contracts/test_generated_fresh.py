"""The committed contract code (options module, its shipped .proto, the Nova examples) must be what
scripts/gen_protos.sh makes now: a stale file fails the suite."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
# What this suite watches; tests/unit/test_generated.py watches grpcrpc/generated/.
OWNED = ["grpcrpc/examples", "grpcrpc/options_pb2.py", "grpcrpc/options_pb2.pyi", "grpcrpc/plugin/include"]


def _files(root: pathlib.Path) -> set[str]:
    found: set[str] = set()
    for name in OWNED:
        path = root / name
        paths = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        found |= {str(p.relative_to(root)) for p in paths
                  if p.exists() and "__pycache__" not in p.parts}
    return found


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("gen")
    result = subprocess.run(
        [str(ROOT / "scripts" / "gen_protos.sh"), str(out)],
        capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_contract_code_is_fresh(fresh: pathlib.Path) -> None:
    made, committed = _files(fresh), _files(ROOT)
    stale = sorted(f for f in made & committed if not filecmp.cmp(fresh / f, ROOT / f, shallow=False))
    assert not stale and made == committed, (
        f"run `make gen`: stale {stale}, missing {sorted(made - committed)}, "
        f"extra {sorted(committed - made)}"
    )


def test_examples_are_generated_for_every_nova_proto(fresh: pathlib.Path) -> None:
    nova = fresh / "grpcrpc" / "examples" / "nova"
    assert sorted(p.name for p in nova.glob("*_grpcrpc.py")) == ["compute_grpcrpc.py", "scheduler_grpcrpc.py"]
    assert (fresh / "grpcrpc" / "plugin" / "include" / "grpcrpc" / "options.proto").read_bytes() == (
        ROOT / "proto" / "grpcrpc" / "options.proto").read_bytes()
