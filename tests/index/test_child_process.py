"""`run_in_child`: a job in a spawned process that reports its failure and can be stopped."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from index.encoders.child_process import ChildJobFailed, ChildJobStopped, run_in_child


def write_pid_and_value(target: Path, value: str) -> None:
    target.write_text(f"{os.getpid()} {value}")


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def exit_abruptly(code: int) -> None:
    os._exit(code)


def sleep_long(marker: Path) -> None:
    marker.write_text(str(os.getpid()))
    time.sleep(600)


def test_the_job_runs_in_another_process_and_is_reaped(tmp_path: Path) -> None:
    target = tmp_path / "out"
    run_in_child(write_pid_and_value, (target, "done"), name="writer")
    pid, value = target.read_text().split()
    assert value == "done" and int(pid) != os.getpid()
    assert multiprocessing.active_children() == []


def test_an_exception_in_the_child_is_raised_with_its_type_and_message() -> None:
    with pytest.raises(ChildJobFailed, match=r"thrower failed: ValueError: bad model file"):
        run_in_child(raise_value_error, ("bad model file",), name="thrower")


def test_a_child_that_dies_without_reporting_names_its_exit_code() -> None:
    with pytest.raises(ChildJobFailed, match="quitter died with exit code 7"):
        run_in_child(exit_abruptly, (7,), name="quitter")


def test_setting_stop_terminates_the_child_promptly(tmp_path: Path) -> None:
    marker, stop = tmp_path / "started", threading.Event()
    set_at: list[float] = []

    def stop_once_started() -> None:
        while not marker.exists():
            time.sleep(0.05)
        set_at.append(time.monotonic())
        stop.set()

    threading.Thread(target=stop_once_started, daemon=True).start()
    with pytest.raises(ChildJobStopped, match="sleeper was stopped"):
        run_in_child(sleep_long, (marker,), name="sleeper", stop=stop)
    assert time.monotonic() - set_at[0] < 2  # the job itself would sleep for 10 minutes
    assert not Path(f"/proc/{int(marker.read_text())}").exists()
    assert multiprocessing.active_children() == []


def test_a_low_priority_child_runs_niced(tmp_path: Path) -> None:
    target = tmp_path / "nice"
    run_in_child(write_nice, (target,), name="nicer", low_priority=True)
    assert int(target.read_text()) == min(19, os.nice(0) + 10)


def write_nice(target: Path) -> None:
    target.write_text(str(os.nice(0)))
