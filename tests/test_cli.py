"""The front door: ``lit3d COMMAND`` and ``python -m lit3d COMMAND`` reach every command."""
import subprocess
import sys
from pathlib import Path

from lit3d.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


def test_the_front_door_lists_every_command_and_refuses_an_unknown_one(capsys):
    assert main(["--help"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in COMMANDS)
    assert main(["fitt"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown command 'fitt'" in err and "fit" in err and "\n" not in err


def test_python_dash_m_lit3d_runs_a_command():
    proc = subprocess.run([sys.executable, "-m", "lit3d", "fit", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "data.test_block" in proc.stdout  # fit's own help, from its typed config
