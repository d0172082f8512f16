"""`make demo` runs the same entry point; its printed steps are its contract."""

import pytest

from grpcrpc import demo


def test_demo_runs_the_nova_flow(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--computes", "2"]) == 0
    out = capsys.readouterr().out
    for step in ("call select_destinations", "cast build_and_run_instance",
                 "fanout cast update_available_resource", "delivery report: 2/2",
                 "NoSuchMethod", "done:",
                 # the trace tree: the fanout is one trace through the broadcaster
                 "compute/update_available_resource fanout [producer]",
                 "    compute/update_available_resource broadcast [server]",
                 "      compute/update_available_resource process [consumer]"):
        assert step in out, step
    assert out.count("] update_available_resource\n") == 2
