"""Cost of one call to the fake host (tests/fakehost.py), as the script tests pay it.

    python bench/fakehost_calls.py [--calls N] [--runs R]

Bash calls a stub N times in a loop (a query, `rpm -q foo`, and a change, `chown root:root f`);
the second change loop has fault injection armed (STUB_FAIL_CHANGE past the last change, so
every change counts the changes made so far) on a host whose call log already holds 2,000 lines,
as a deployed host's does. Prints milliseconds per call (wall and CPU of bash and this process),
the median of R runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests")]

import fakehost  # noqa: E402


def cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def per_call(env: dict, root: str, command: str, calls: int, **extra: str) -> tuple[float, float]:
    script = f"for ((i = 0; i < {calls}; i++)); do {command}; done; true"
    env = {"PATH": os.environ["PATH"], **env, "PG_ROOT": root, **extra}
    wall, used = time.perf_counter(), cpu()
    subprocess.run(["bash", "-c", script], env=env, check=True, capture_output=True)
    return (time.perf_counter() - wall) * 1000 / calls, (cpu() - used) * 1000 / calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    env = fakehost.serve()
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "f").write_text("")
        deployed = Path(tmp, "deployed")
        Path(deployed, ".fake").mkdir(parents=True)
        Path(deployed, "f").write_text("")
        Path(deployed, ".fake/calls.log").write_text("".join(f"M chown root:root /x{i}\n" for i in range(2000)))
        cases = {
            "query (rpm -q foo)": (tmp, "rpm -q foo", {}),
            "change (chown)": (tmp, f"chown root:root {tmp}/f", {}),
            "change, fault injection armed": (
                deployed,
                f"chown root:root {deployed}/f",
                {"STUB_FAIL_CHANGE": "999999"},
            ),
        }
        print(f"| call | wall ms/call | CPU ms/call | (median of {args.runs}, {args.calls} calls each) |")
        print("|---|---|---|---|")
        for name, (root, command, extra) in cases.items():
            runs = [per_call(env, str(root), command, args.calls, **extra) for _ in range(args.runs)]
            wall, used = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
            print(f"| {name} | {wall:.3f} | {used:.3f} | |")


if __name__ == "__main__":
    main()
