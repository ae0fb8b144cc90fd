"""The README's digits walk-through (train, make images, predict, evaluate) runs as written, in order.

The commands come from the README itself: the first bash block of its "Training" section. Only the
training line's length changes (`--epochs 1` appended; later flags win), to keep the test short.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def walkthrough_commands() -> list[str]:
    section = README.read_text().split("## Training", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.startswith("python ")]


def test_the_readme_digits_walkthrough_runs_as_written(tmp_path):
    commands = walkthrough_commands()
    assert [c.split()[:3] for c in commands] == [["python", "-m", "train"], ["python", "-c", '"from']] + [
        ["python", "-m", "train"]
    ] * 2
    venv_bin = str(Path(sys.executable).parent)  # `python` is this interpreter, as after `. .venv/bin/activate`
    env = dict(os.environ, PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(README.parent)
    outputs = []
    for i, command in enumerate(commands):
        if i == 0:
            command += " --epochs 1 --no-tensorboard --no-plots"
        proc = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        outputs.append(proc.stdout)
    assert (tmp_path / "runs" / "resnet20-digits" / "best.pt").is_file()
    sevens = sorted((tmp_path / "digits_images" / "7").glob("*.png"))
    assert len(sevens) == 3 and all(f"{path.relative_to(tmp_path)}\n" in outputs[2] for path in sevens)
    assert "top-1" in outputs[3] and (tmp_path / "evaluation" / "evaluation.json").is_file()
