"""bench/soak.py runs end to end, briefly (a benchmark, so no memory or speed asserts)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "soak.py"


def test_soak_prints_samples_and_slopes(tmp_path: Path) -> None:
    options = ["--corpus", str(tmp_path / "corpus"), "--workdir", str(tmp_path / "work")]
    options += ["--small", "20", "--senders", "2", "--seconds", "6"]
    options += ["--reload-every", "2", "--status-every", "2", "--sample-every", "1"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("Soak: 2 storescu senders over 20 small instances for 6 s")
    assert "| seconds | adapter RSS MB | adapter threads | adapter fds | scp RSS MB |" in text
    assert "RSS slope over the last half, adapter: " in text
    assert "RSS slope over the last half, scp: " in text
    assert re.search(r"storescu rounds \(0 failed\), [23] reloads, [23] status calls", text)
