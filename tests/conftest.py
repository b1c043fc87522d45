"""Fixtures shared by the test modules."""

import gc
import json
import subprocess
import sys
from pathlib import Path

# Importing the SDK and providers and running the program under mocks allocate hundreds of thousands
# of long-lived objects: with the default threshold (700) the collector walks them again and again,
# a third of a program run's time. Fewer, larger collections (measured: a first run 4.3 -> 3.3 s CPU).
gc.set_threshold(100_000, 50, 100)

import program  # noqa: E402
import pytest  # noqa: E402

RECORDING: list[subprocess.Popen] = []  # relay_scenarios.py --record, started once per process


def start_recording() -> subprocess.Popen:
    if not RECORDING:
        RECORDING.append(
            subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("relay_scenarios.py")), "--record"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return RECORDING[0]


def pytest_collection_finish(session):
    """Starts recording Postal's deliveries as soon as a selected test needs them: the recording mostly
    waits (its hang scenarios wait out Postal's timeouts, twice where Postal resets the session), so it
    runs beside the tests before, in a process of its own (the fake relay answers within the client's
    timeouts without sharing this process's interpreter lock with the tests)."""
    if any("recorded" in getattr(item, "fixturenames", ()) for item in session.items):
        start_recording()


def pytest_unconfigure(config):
    """The objects still alive are left to the process's end: without this, the interpreter's last
    collections walk them all again (measured: a process that ran the program twice exits in 1.1 s,
    0.06 s frozen; an xdist worker holds more, and the run waits for its exit)."""
    gc.freeze()


@pytest.fixture(scope="session")
def run():
    """`__main__.py` under mocks with the default test configuration (program.BASE_CONFIG)."""
    result = program.run()
    assert result.error is None, result.error
    return result


@pytest.fixture(scope="session")
def recorded():
    """{scenario id: delivery}: what Postal 3.3.6 stores for each relay scenario, recorded by running its
    sender against the fake relay (relay_scenarios.record_postal)."""
    recording = start_recording()
    out, err = recording.communicate(timeout=120)
    assert recording.returncode == 0, err
    return json.loads(out)
