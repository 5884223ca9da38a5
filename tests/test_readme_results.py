"""The README's results block is generated from the committed metrics and must match them."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_results_match_the_committed_metrics():
    proc = subprocess.run([sys.executable, "scripts/readme_results.py", "--check"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
