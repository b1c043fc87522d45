"""Fixtures shared by the test modules."""

import gc
from concurrent.futures import Future, ThreadPoolExecutor

# Importing the SDK and providers and running the program under mocks allocate hundreds of thousands
# of long-lived objects: with the default threshold (700) the collector walks them again and again,
# a third of a program run's time. Fewer, larger collections (bench: first run 4.3 -> 3.3 s CPU).
gc.set_threshold(100_000, 50, 100)

import program  # noqa: E402
import pytest  # noqa: E402

RECORDING: list[Future] = []  # record_postal started in the background, once per process


def record() -> dict:
    from fake_relay import FakeRelay
    from relay_scenarios import record_postal

    relay = FakeRelay()
    try:
        return record_postal(relay)
    finally:
        relay.close()


def start_recording() -> Future:
    if not RECORDING:
        RECORDING.append(ThreadPoolExecutor(1, thread_name_prefix="record-postal").submit(record))
    return RECORDING[0]


def pytest_collection_finish(session):
    """Starts recording Postal's deliveries as soon as a selected test needs them: the recording mostly
    waits (its hang scenarios wait out Postal's timeouts, twice where Postal resets the session), so it
    runs in a thread beside the tests before."""
    if any("recorded" in getattr(item, "fixturenames", ()) for item in session.items):
        start_recording()


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
    return start_recording().result()
