"""The CLI wraps the library: a tiny preset run, overrides, export."""
import json

import pytest

from sae_jax.cli import main
from sae_jax.export import load_sae


def test_train_preset_with_overrides_then_export(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "tiny", "--run-dir", str(run), "--steps", "30", "--sae.d-sae", "128",
          "--data.batch-size", "256", "--log.no-progress"])
    out = capsys.readouterr().out
    assert "FVU" in out and "exported SAE" in out
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["sae"]["d_sae"] == 128 and cfg["steps"] == 30
    assert load_sae(run / "export").d_sae == 128
    main(["export", "--run-dir", str(run), "--out", str(tmp_path / "again")])
    assert load_sae(tmp_path / "again").params["W_dec"].shape == (128, 64)


def test_unknown_command_exits_with_usage(capsys):
    with pytest.raises(SystemExit):
        main(["nope"])
    assert "usage: sae-jax" in capsys.readouterr().out
