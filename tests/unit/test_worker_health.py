"""The worker's health file and the standard-library probe that reads it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from openenv_zmq.worker.health import PROBE, HealthFile


def probe(path: Path, want: str, max_age: float = 10.0) -> int:
    """The probe's exit code, run as a Kubernetes exec probe runs it."""
    command = [sys.executable, "-I", "-S", "-c", PROBE, str(path), want, str(max_age)]
    return subprocess.run(command, capture_output=True, timeout=30).returncode


def test_beat_writes_the_state_at_most_every_second_unless_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "health"
    health = HealthFile(path)
    health.beat("starting", 100.0)
    assert path.read_text() == "starting\n"
    os.utime(path, (0, 0))
    health.beat("starting", 100.5)
    assert path.stat().st_mtime == 0  # not rewritten within the second
    health.beat("ready", 100.6)
    assert path.read_text() == "ready\n"  # a change is written at once
    os.utime(path, (0, 0))
    health.beat("ready", 101.6)
    assert path.stat().st_mtime > 0
    assert [p.name for p in tmp_path.iterdir()] == ["health"]  # no scratch file left
    health.remove()
    assert not path.exists()
    health.remove()  # twice is fine


def test_probe_reads_state_and_age(tmp_path: Path) -> None:
    path = tmp_path / "health"
    assert probe(path, "alive") == 1  # no file: the worker has not started, or stopped
    health = HealthFile(path)
    health.beat("starting", 0.0)
    assert probe(path, "alive") == 0
    assert probe(path, "ready") == 1
    health.beat("ready", 0.1)
    assert probe(path, "alive") == 0
    assert probe(path, "ready") == 0
    stale = time.time() - 60
    os.utime(path, (stale, stale))  # the loop stopped turning a minute ago
    assert probe(path, "alive", max_age=30) == 1
    assert probe(path, "ready", max_age=30) == 1


def test_a_health_file_that_cannot_be_written_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    health = HealthFile(tmp_path / "no such folder" / "health")
    with caplog.at_level(logging.WARNING):
        health.beat("starting", 0.0)
        health.beat("ready", 1.0)
    assert len(caplog.records) == 1
    assert "cannot write the health file" in caplog.records[0].getMessage()
