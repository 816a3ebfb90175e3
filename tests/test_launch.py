"""The flags given to `accelerate launch` over a launch config file (the multi-process runs are in
test_distributed.py)."""
import subprocess
import sys

from conftest import REPO
from harness.core.launch_config import launcher_overrides


def test_the_launchers_own_parser_reads_the_flags_that_override_the_file():
    got = launcher_overrides(["--config_file", "launch/ddp.yaml", "--num_processes", "4", "--mixed_precision", "bf16",
                              "--gradient_accumulation_steps", "2", "-m", "harness.cli", "train", "--num_processes",
                              "9"])  # the last one is the training's argument, not the launcher's
    assert got == {"world_size": (4, "accelerate launch --num_processes"),
                   "mixed_precision": ("bf16", "accelerate launch --mixed_precision"),
                   "grad_accum": (2, "accelerate launch --gradient_accumulation_steps")}
    assert launcher_overrides(["--config_file", "launch/ddp.yaml", "-m", "harness.cli", "train"]) == {}


def test_a_process_started_by_accelerate_launch_finds_the_launchers_flags(tmp_path):
    """A real `accelerate launch` (one process) of a script that reads its launcher's flags; and a
    process started otherwise has none."""
    probe = tmp_path / "probe.py"
    probe.write_text("from harness.core.launch_config import launcher_overrides\nprint(launcher_overrides())\n")
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                               "--mixed_precision", "no", str(probe)], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert "{'world_size': (1, 'accelerate launch --num_processes'), " \
           "'mixed_precision': ('no', 'accelerate launch --mixed_precision')}" in launched.stdout
    plain = subprocess.run([sys.executable, str(probe)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() == "{}"
