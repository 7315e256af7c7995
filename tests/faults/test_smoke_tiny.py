"""The tiny recipe the fault tests bend runs clean and passes its gate."""

from conftest import edgekit


def test_tiny_run_passes_its_gate(tiny_run):
    assert (tiny_run / "report.json").is_file()
    assert edgekit("check", tiny_run / "report.json").returncode == 0
