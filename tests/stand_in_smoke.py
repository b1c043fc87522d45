"""Stand-in for scripts/smoke_test.py in tests/test_e2e.py: reads the outputs the way the real one does
(`pulumi stack output --json --show-secrets --stack NAME`, through the stand-in CLI), prints its lines in
the real one's format (`PASS  delivery  Sent after Ns: ...`), and echoes the API key as a careless tool
might (the e2e run must redact it). $FAKE_SMOKE_EXIT sets the exit code; argv goes to smoke.jsonl."""

import json
import os
import subprocess
import sys
from pathlib import Path

argv = sys.argv[1:]
home = Path(os.environ["FAKE_PULUMI_HOME"])
with (home / "smoke.jsonl").open("a") as log:
    log.write(json.dumps(argv) + "\n")
stack = argv[argv.index("--stack") + 1]
out = subprocess.run(
    ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack],
    capture_output=True,
    text=True,
    check=True,
)
outputs = json.loads(out.stdout)
print(f"PASS  https     {outputs['hostname']} answers (key {outputs['apiKey']})")
code = int(os.environ.get("FAKE_SMOKE_EXIT", "0"))
if code == 0:
    print(
        "PASS  delivery  Sent after 4s: Postal recorded: Message for ops@example.net accepted by smtp-relay.gmail.com"
    )
else:
    print("FAIL  delivery  Held: the relay refused it")
sys.exit(code)
