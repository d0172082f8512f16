"""The committed generated code must be what scripts/gen_protos.sh makes now."""

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: pathlib.Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True, capture_output=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    fresh = tmp_path / "grpcrpc" / "generated"
    committed = ROOT / "grpcrpc" / "generated"
    stale = []
    for path in sorted(fresh.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            other = committed / path.relative_to(fresh)
            if not other.exists() or not filecmp.cmp(path, other, shallow=False):
                stale.append(str(path.relative_to(fresh)))
    extra = [
        str(p.relative_to(committed)) for p in committed.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
        and not (fresh / p.relative_to(committed)).exists()
    ]
    assert not stale and not extra, f"run `make gen`: stale {stale}, extra {extra}"
