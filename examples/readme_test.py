import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_quickstart_runs_as_written(tmp_path, monkeypatch, capsys):
    quickstart = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(quickstart, "README quickstart", "exec"), namespace)
    assert (tmp_path / "cats_and_dogs.keras").is_file()
    outputs = namespace["outputs"]
    assert outputs["classes"].shape == (64, 5)
    np.testing.assert_allclose(outputs["classes"].sum(1), 1.0, atol=1e-5)
    printed = capsys.readouterr().out.splitlines()[-1]
    assert any(name in printed for name in ("persian", "siamese", "beagle", "pug", "boxer"))
