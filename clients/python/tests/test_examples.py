"""Every example runs against a real sidecar, as the README tells a user to run it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from servers import Sidecar

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(example: str, sidecar: Sidecar, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / example), "--address", sidecar.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_csv_enrichment(sidecar: Sidecar) -> None:
    done = run("csv_enrichment.py", sidecar)
    assert done.returncode == 0, done.stderr
    assert "held 12 credits" in done.stdout
    assert "enriched 8 of 12 rows: charged 8, released 4" in done.stdout
    assert "available now: 992" in done.stdout
    assert "batches: 1 of at most 100 rows" in done.stdout


def test_csv_enrichment_in_small_batches_from_parallel_workers(sidecar: Sidecar) -> None:
    done = run("csv_enrichment.py", sidecar, "--batch-size", "5", "--workers", "3")
    assert done.returncode == 0, done.stderr
    assert "enriched 8 of 12 rows: charged 8, released 4" in done.stdout
    assert "batches: 3 of at most 5 rows" in done.stdout
    assert "available now: 992" in done.stdout


def test_csv_enrichment_refused_whole(sidecar: Sidecar) -> None:
    refused = run("csv_enrichment.py", sidecar, "--plan-credits", "5")
    assert refused.returncode == 1, refused.stderr
    assert "the batch was refused whole: account" in refused.stdout and "5 credits available" in refused.stdout


def test_waterfall(sidecar: Sidecar) -> None:
    done = run("waterfall.py", sidecar)
    assert done.returncode == 0, done.stderr
    lines = set(done.stdout.splitlines())
    assert "worst case per contact: 4 credits" in lines
    assert "contact 3: charged 3 (b=2, validator=1)" in lines
    assert "contact 5: charged 1 (own-key=0, validator=1)" in lines
    assert "contact 2 again: charged 0 (a=0, validator=0)" in lines
    assert "spent 10, available 990, held 0" in lines


def test_dialer(sidecar: Sidecar) -> None:
    done = run("dialer.py", sidecar, "--region", "de", "--minutes", "4", "--minute-seconds", "0.4")
    assert done.returncode == 0, done.stderr
    assert "call started: 6 credits held" in done.stdout
    assert "minute 4: charged 2, still held 0" in done.stdout
    ended = re.search(r"call ended: 8 credits for de minutes, (\d+) extensions", done.stdout)
    assert ended and int(ended.group(1)) >= 2, done.stdout
