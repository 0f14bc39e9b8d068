"""The CLI refuses bad input at start with a message naming the problem."""

import subprocess
import sys


def test_up_with_bad_config_fails_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("serving:\n  mode: sideways\n")
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "up", "--config", str(bad)], text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 2
    assert "serving.mode" in result.stderr
