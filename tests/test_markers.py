"""The quick loop's contract: a test that starts Snakemake is marked slow (conftest's guard fails it otherwise)."""
import subprocess
import sys

import pytest

from conftest import starts_snakemake


@pytest.mark.parametrize("command, expected", [
    ([sys.executable, "-m", "snakemake", "-n"], True),
    (["/opt/venv/bin/snakemake", "--lint"], True),
    ("snakemake --cores 1", True),
    ([sys.executable, "-m", "pruning", "prune", "--output-dir", "snakemake"], False),
    (["true"], False),
])
def test_snakemake_command_lines_are_recognised(command, expected):
    assert starts_snakemake(command) is expected


def test_an_unmarked_test_cannot_start_snakemake(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="runs Snakemake: mark it @pytest.mark.slow"):
        subprocess.run([sys.executable, "-m", "snakemake", "--version"], cwd=tmp_path)
    assert subprocess.run(["true"]).returncode == 0  # other commands run as before
