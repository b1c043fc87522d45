"""Send one message through postal-gateway's HTTP API.

    POSTAL_API_URL=... POSTAL_API_KEY=... python send_example.py --to artist@gmail.com --from noreply@rdo-dev.com
    python send_example.py --stack prod --to artist@gmail.com     # reads the gateway's stack outputs

Postal answers HTTP 200 even when it refuses a message, so success is `"status": "success"` in the JSON
body, never the HTTP status. Exit code: 0 sent, 1 refused or unreachable, 2 usage/config error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import requests


def stack_outputs(stack: str, cwd: str | None) -> dict:
    """The gateway's outputs, secrets included (`pulumi stack output --json --show-secrets`)."""
    result = subprocess.run(
        ["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout)


def settings(args: argparse.Namespace) -> tuple[str, str, str | None]:
    """(API URL, API key, default From) from the stack outputs or POSTAL_API_URL / POSTAL_API_KEY / POSTAL_FROM."""
    if args.stack:
        out = stack_outputs(args.stack, args.cwd)
        return out["apiUrl"], out["apiKey"], f"noreply@{out['sendingDomains'][0]}"
    return os.environ["POSTAL_API_URL"], os.environ["POSTAL_API_KEY"], os.environ.get("POSTAL_FROM")


def send(api_url: str, api_key: str, message: dict, timeout: float = 30) -> dict:
    """POST /api/v1/send/message; returns Postal's JSON answer (raises on HTTP or JSON errors)."""
    response = requests.post(api_url, json=message, headers={"X-Server-API-Key": api_key}, timeout=timeout)
    response.raise_for_status()
    return response.json()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--to", action="append", required=True, help="recipient (repeatable)")
    parser.add_argument(
        "--from",
        dest="sender",
        help="From address; its domain must be a sending domain "
        "(default: POSTAL_FROM or noreply@<first sending domain>)",
    )
    parser.add_argument("--subject", default="Render Complete: Shot 001")
    parser.add_argument("--body", default="Your render has finished successfully.")
    parser.add_argument("--stack", help="read URL and key from this postal-gateway stack instead of the environment")
    parser.add_argument("--cwd", help="directory of the postal-gateway project (with --stack)")
    args = parser.parse_args(argv)

    try:
        api_url, api_key, default_sender = settings(args)
    except KeyError as err:
        print(f"missing {err.args[0]}: set POSTAL_API_URL and POSTAL_API_KEY, or pass --stack", file=sys.stderr)
        return 2
    except (OSError, subprocess.CalledProcessError, ValueError) as err:
        print(f"cannot read the stack outputs: {getattr(err, 'stderr', None) or err}", file=sys.stderr)
        return 2
    sender = args.sender or default_sender
    if not sender:
        print("no From address: pass --from or set POSTAL_FROM", file=sys.stderr)
        return 2

    message = {"to": args.to, "from": sender, "subject": args.subject, "plain_body": args.body}
    try:
        answer = send(api_url, api_key, message)
    except (requests.RequestException, ValueError) as err:
        print(f"error: {api_url} did not answer with Postal JSON: {err}", file=sys.stderr)
        return 1

    data = answer.get("data") or {}
    if answer.get("status") != "success":
        print(f"error: {data.get('code', answer.get('status'))}: {data.get('message', '')}", file=sys.stderr)
        return 1
    print(f"sent: {data['message_id']}")
    for recipient, info in (data.get("messages") or {}).items():
        print(f"  {recipient}: id {info.get('id')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
