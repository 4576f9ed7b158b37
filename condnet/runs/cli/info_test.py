"""`condnet info`."""

import json

import pytest

from condnet.runs.cli import main


@pytest.mark.slow
def test_cli_info_reports_parameters_and_compute_per_route(trained, capsys):
    assert main(["info", str(trained / "run"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["parameters"]) == {"trunk", "gate", "expert angular", "expert round"}
    routes = info["macs_per_route"]
    shared = info["macs"]["trunk"] + info["macs"]["gate"]
    assert routes["round"] == shared + info["macs"]["expert round"]
    assert info["macs_all_experts"] > max(routes.values()) > shared > 0
    assert main(["info", str(trained / "run")]) == 0
    assert "MACs per image by route" in capsys.readouterr().out
