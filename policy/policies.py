"""postal-gateway guardrails: the resource checks of the CrossGuard policy pack.

Only policy objects live here; `__main__.py` wraps them in a PolicyPack (constructing one
starts the analyzer server and blocks, so importing this module must never do it).

Each `validate` receives pulumi_policy's ResourceValidationArgs: `resource_type`, `name` (the
logical name), `urn`, `props` (the resource inputs, camelCase, as a read-only Mapping whose
unknown preview values raise UnknownValueError) and `opts` (PolicyResourceOptions: `protect`,
`ignore_changes`, `parent`, ...). Secret inputs arrive as plain values: the validate API does
not say which inputs are secret.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from netranges import world_open  # policy/ is on sys.path in the pack (and in the tests)
from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

FIREWALL = "gcp:compute/firewall:Firewall"
ADDRESS = "gcp:compute/address:Address"
DISK = "gcp:compute/disk:Disk"
DNS_RECORD = "cloudflare:index/dnsRecord:DnsRecord"

# Guarded ports: what they are and the config key that sets who may reach them.
GUARDED_PORTS = {
    22: ("SSH", "sshSourceRanges", "10.8.0.0/16 (or unset it: SSH through IAP only)"),
    25: ("SMTP", "smtpSourceRanges", "10.0.0.0/8 (the networks of the internal senders)"),
    443: ("HTTPS: Postal's web UI and API", "webSourceRanges", "203.0.113.0/24 (or unset it: the SMTP and SSH ranges)"),
}
TCP_PROTOCOLS = {"tcp", "6", "all"}  # SSH, SMTP and HTTPS run over TCP; "all" covers every protocol


# --- no-open-ssh-smtp, web-ui-not-world-open ---------------------------------------------------


def _ports(allow: Mapping, guarded) -> set[int]:
    """The guarded ports an `allows` entry opens; no `ports` (or protocol all) means every port."""
    if str(allow.get("protocol", "")).lower() not in TCP_PROTOCOLS:
        return set()
    ports = allow.get("ports")
    if not ports:
        return set(guarded)
    opened = set()
    for item in ports:
        low, _, high = str(item).strip().partition("-")
        try:
            low_n, high_n = int(low), int(high or low)
        except ValueError:
            continue  # not a port number: GCP rejects it anyway
        opened |= {p for p in guarded if low_n <= p <= high_n}
    return opened


def _ingress(props: Mapping, guarded) -> tuple[set[int], list[str]]:
    """The guarded ports an ingress allow rule opens, and its sources (GCP's 0.0.0.0/0 when it names none)."""
    if str(props.get("direction") or "INGRESS").upper() != "INGRESS":
        return set(), []  # egress rules have destination ranges, not sources
    ports = set()
    for allow in props.get("allows") or []:
        ports |= _ports(allow, guarded)
    ranges = [str(r) for r in props.get("sourceRanges") or []]
    if not ranges and not props.get("sourceTags") and not props.get("sourceServiceAccounts"):
        ranges = ["0.0.0.0/0 (GCP's default for an ingress rule without sources)"]
    return ports, ranges


def _open_message(rules: str, port: int, open_ranges, together: bool = False, bounce: bool = False) -> str:
    what, key, example = GUARDED_PORTS[port]
    if bounce and port == 25:  # the bounce rule (components/network.py) has its own key
        what, key, example = "SMTP, for bounces", "bounceSourceRanges", "209.85.128.0/17 (or unset it)"
    return (
        f"{rules} open{'' if together else 's'} port {port} ({what}) to the whole Internet "
        f"({', '.join(map(str, open_ranges))} {'together ' if together else ''}cover most of it). Fix: set "
        f"postal-gateway:{key} to the ranges that really need it, e.g. `pulumi config set --path '{key}[0]' "
        f"{example}`, or narrow sourceRanges in the code that defines {'these rules' if together else 'this rule'} "
        "(components/network.py)."
    )


def _firewall_check(guarded: tuple[int, ...]):
    """A validate function reporting each of `guarded` that an ingress rule opens to (most of) the
    Internet: a /0, or ranges that together cover half of the address space (netranges.py)."""

    def check(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type != FIREWALL:
            return
        ports, ranges = _ingress(args.props, guarded)
        open_ranges = [r for r in ranges if r.startswith("0.0.0.0/0 (")] or world_open(ranges)
        if ports and open_ranges:
            for port in sorted(ports):
                message = _open_message(
                    f"Firewall '{args.name}'", port, open_ranges, bounce="allow-bounce" in args.name
                )
                report_violation(message, args.urn)

    return check


def _firewalls_together(guarded: tuple[int, ...]):
    """A stack validate function: each guarded port judged over every ingress rule of a network that
    opens it (two rules of half the Internet each are the whole of it). Ports a single rule already
    opens to the world are left to the per-rule policy, so nothing is reported twice."""

    def check(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        by_port: dict[tuple[str, int], list] = {}
        for resource in args.resources:
            if resource.resource_type != FIREWALL:
                continue
            ports, ranges = _ingress(resource.props, guarded)
            if world_open(ranges) or any(r.startswith("0.0.0.0/0 (") for r in ranges):
                continue  # reported by the per-rule policy
            try:
                network = str(resource.props.get("network"))
            except UnknownValueError:  # a new network in a preview: the stack's rules share it
                network = "(not yet known)"
            for port in ports:
                by_port.setdefault((network, port), []).append((resource, ranges))
        for (_, port), rules in sorted(by_port.items(), key=lambda item: item[0][1]):
            open_ranges = world_open([r for _, ranges in rules for r in ranges])
            if len(rules) > 1 and open_ranges:
                names = ", ".join(f"'{r.name}'" for r, _ in rules)
                for resource, _ in rules:
                    report_violation(
                        _open_message(f"Firewalls {names}", port, open_ranges, together=True), resource.urn
                    )

    return check


# --- static-ip-protected, data-disk-protected, no-ephemeral-in-production ----------------------
# An ephemeral stack (postal-gateway:ephemeral, scripts/e2e.py) labels its GCP resources
# `ephemeral: "true"` and leaves the static IP and the data disk unprotected so that destroy
# removes them. Only such a labelled resource may be unprotected, and never on a production
# stack: the stack named in the URN (urn:pulumi:<stack>::<project>::...) and listed in the
# pack's `productionStacks` config (default: prod).

PRODUCTION_STACKS = ("prod",)
PRODUCTION_SCHEMA = PolicyConfigSchema(
    properties={
        "productionStacks": {
            "type": "array",
            "items": {"type": "string"},
            "default": list(PRODUCTION_STACKS),
            "description": "stacks that may never be ephemeral",
        }
    }
)


def stack_of(urn: str) -> str:
    return urn.split("::", 1)[0].removeprefix("urn:pulumi:") if urn.startswith("urn:pulumi:") else ""


def _production(args: ResourceValidationArgs) -> bool:
    stacks = (args.get_config() or {}).get("productionStacks") or PRODUCTION_STACKS
    return stack_of(args.urn) in stacks


def _ephemeral(args: ResourceValidationArgs) -> bool:
    labels = args.props.get("labels") or {}
    return str(labels.get("ephemeral", "")).lower() == "true"


def _throwaway(args: ResourceValidationArgs) -> bool:
    """An ephemeral resource outside production: it may go unprotected (no-ephemeral-in-production reports the rest)."""
    return _ephemeral(args) and not _production(args)


def _check_ephemeral(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type.startswith("gcp:") and _ephemeral(args) and _production(args):
        report_violation(
            f"Resource '{args.name}' is labelled ephemeral on the production stack '{stack_of(args.urn)}': "
            "an ephemeral stack leaves the static IP and the data disk unprotected so that destroy deletes them. "
            "Fix: pulumi config rm postal-gateway:ephemeral (it is for throwaway stacks such as scripts/e2e.py's "
            "e2e-<id>), and remove an `ephemeral` entry from postal-gateway:labels.",
            args.urn,
        )


def _check_address(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type == ADDRESS and not args.opts.protect and not _throwaway(args):
        report_violation(
            f"Static IP '{args.name}' is not protected. It is the Google Workspace SMTP relay allowlist entry: "
            "deleting or replacing it stops all mail. Fix: create it with "
            "`opts=pulumi.ResourceOptions(protect=True)` (components/network.py).",
            args.urn,
        )


def _is_data_disk(args: ResourceValidationArgs) -> bool:
    """components/host.py names the data disk `<name>-data` and creates it blank; the boot disk
    (`<name>-boot`) is built from an OS image and may be replaced, so it need not be protected."""
    return args.name.endswith("-data") or not args.props.get("image")


def _check_disk(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type == DISK and _is_data_disk(args) and not args.opts.protect and not _throwaway(args):
        report_violation(
            f"Data disk '{args.name}' is not protected. It holds MariaDB, Postal's config and Caddy's "
            "certificates; a delete or replace loses all of it. Fix: create it with "
            "`opts=pulumi.ResourceOptions(protect=True)` (components/host.py); to retire it on purpose, "
            "run `pulumi state unprotect <urn>` first.",
            args.urn,
        )


# --- mail-records-unproxied -------------------------------------------------------------------


def _check_dns_record(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type == DNS_RECORD and args.props.get("proxied") is True:
        report_violation(
            f"DNS record '{args.name}' is proxied through Cloudflare. Mail records (the host's A record, MX, "
            "TXT, psrp CNAME) must be DNS-only: the proxy hides the VM's IP and carries no SMTP. "
            "Fix: pass `proxied=False` to cloudflare.DnsRecord (components/dns.py).",
            args.urn,
        )


# --- no-plain-secrets-in-commands -------------------------------------------------------------
# Secret material is recognised by what it is, wherever it sits in a command line or an
# environment value, and also by the name it is assigned to.

# A PEM private key of any kind (RSA, EC, OPENSSH, ENCRYPTED, PGP ...). Certificates and public
# keys (PEM, or an OpenPGP armored public key block) are not secrets, so they pass.
PEM_PRIVATE = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY[A-Z ]*-----")
PEM_PUBLIC = re.compile(
    r"-----BEGIN (?P<label>CERTIFICATE|PUBLIC KEY|X509 CRL|PGP PUBLIC KEY BLOCK)-----.*?-----END (?P=label)-----", re.S
)
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{40,}={0,2}")
# `NAME=value`, `--name=value`: the name must not be glued to a word, `$` or `-` before it.
ASSIGNMENT = re.compile(
    r"""(?<![\w$-])(?P<name>-{0,2}[A-Za-z_][\w-]*)="""
    r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s'";&|<>()`]*))"""
)
# PASS as a word part: DB_PASS, SMTP_PASS (not BYPASS or PASSTHROUGH); PWD: MYSQL_PWD
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|PASSPHRASE|(?<![A-Z])PASS(?![A-Z])|PWD|SECRET|TOKEN|KEY", re.IGNORECASE)
# `scheme://user:password@host`
URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:(?P<value>[^\s/@'\"]+)@", re.IGNORECASE)
# `--password value`, `--api-token 'value'` (the `=` form is an ASSIGNMENT)
SECRET_OPTION = re.compile(
    r"""(?<![\w-])(?P<name>--?[\w-]*(?:password|passwd|secret|token|api-?key)[\w-]*)\s+"""
    r"""(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s'";&|<>()`]+))""",
    re.IGNORECASE,
)
# `-p<password>` glued, as mysql/mariadb take it, bare or quoted (`-p 3306`, `-p22`, `mkdir -p` do not match)
GLUED_P = re.compile(r"""(?<![\w-])-p(?:'(?P<sq>[^']{4,})'|"(?P<dq>[^"]{4,})"|(?P<value>[^\s'"$-][^\s'";&|]{3,}))""")
# curl's `-u user:password`, `--user=user:password`, `-uuser:password` (a user alone makes curl ask)
USER_OPTION = re.compile(
    r"""(?<![\w-])(?:-u\s*|--user(?:\s+|=))(?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s'";&|<>()`]+))"""
)
# `"password": "value"`, `password: value`, `'api_key': 'value'` (JSON, YAML, Python, Ruby)
# The name is a whole [\w-] run (the lookbehind): tried from inside a run, the scan would only
# fail again after backtracking over the rest of it, which made long command lines quadratic.
SECRET_FIELD = re.compile(
    r"""["']?(?<![\w-])(?P<name>[\w-]*(?:password|passwd|passphrase|pwd|secret|token|api_?key|private_?key)[\w-]*"""
    r"""|[\w-]*_pass)["']?\s*:\s*"""
    r"""(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s,;}{()\[\]"'$.\\]+)(?=[\s,}\\]|$))""",
    re.IGNORECASE,
)
# A token that looks random: long, from the base64/url-safe alphabet, with upper and lower case
# letters and digits, and many distinct characters. Hex digests and commit ids (one case) pass.
# Right after `=` too: `sudo env PG_DB=<generated password>` is how a step's settings travel.
TOKEN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{20,}={0,2}")
MYSQL = re.compile(r"(?<![\w.-])(?:mysql|mariadb|mysqldump|mysqladmin|mariadb-dump|mariadb-admin)(?![\w.-])")
# Values that are not literal secrets: `$VAR`/`$(cat file)` read at run time (how the remote
# scripts load the stdin payload), `%s` format placeholders, `/paths`, and `==` comparisons.
NOT_LITERAL = ("$", "%", "/", "=")
NOT_LITERAL_WORDS = {"null", "none", "nil", "true", "false", "~", "", "redacted", "[secret]"}
COMMAND_TYPES = ("command:remote:Command", "command:local:Command")
COMMAND_FIELDS = ("create", "update", "delete")


def _literal(value: str) -> bool:
    return bool(value) and not value.startswith(NOT_LITERAL) and value.lower() not in NOT_LITERAL_WORDS


def _random_looking(token: str) -> bool:
    core = token.strip("=-_")
    if len(core) < 20 or not (re.search(r"[A-Z]", core) and re.search(r"[a-z]", core) and re.search(r"\d", core)):
        return False
    if re.fullmatch(r"[A-Za-z]+(?:[_-][A-Za-z0-9]+)*", core):
        return False  # identifiers: PG_POSTAL_VERSION, postal-gateway-smtp-tls
    distinct = len(set(core)) / len(core)
    return distinct >= 0.5 or len(set(core)) >= 20


def _decoded_text(run: str) -> str | None:
    """The text a base64 run encodes (files shipped inside a command), or None for binary/random data."""
    import base64
    import binascii

    for start in range(4):  # the text may start inside a base64 quantum of a longer blob
        chunk = run[start:]
        chunk = chunk[: len(chunk) - len(chunk) % 4]
        try:
            data = base64.b64decode(chunk)
        except (binascii.Error, ValueError):
            continue
        try:
            text = data.decode()
        except UnicodeDecodeError:
            continue
        if sum(c.isprintable() or c in "\n\t\r" for c in text) >= 0.95 * len(text):
            return text
    return None


def secrets_in(text: str, depth: int = 0) -> list[str]:
    """What in a command line or value looks like a plain secret (a description, never the value).
    Base64 that encodes text (a file shipped inside the command) is decoded and searched too."""
    return list(_secrets_in(text, depth))


@functools.lru_cache(maxsize=256)  # a preview checks a step's command line in several places
def _secrets_in(text: str, depth: int) -> tuple[str, ...]:
    found = []
    if PEM_PRIVATE.search(text):
        found.append("a PEM private key")
    text = PEM_PUBLIC.sub("", text)  # certificates and public keys are random-looking but public
    encoded = set()
    for match in BASE64_RUN.finditer(text):
        decoded = _decoded_text(match.group(0)) if depth < 2 else None
        if decoded is not None:
            encoded.add(match.group(0))
            found += [f"base64 of {what}" for what in secrets_in(decoded, depth + 1)]
    if any(_literal(m.group("value")) for m in URL_CREDENTIALS.finditer(text)):
        found.append("a URL with user:password@")
    for pattern, what in ((SECRET_OPTION, "option"), (SECRET_FIELD, "field")):
        for match in pattern.finditer(text):
            value = next((v for v in match.group("dq", "sq", "bare") if v is not None), "")
            if _literal(value):
                found.append(f"{what} {match.group('name')}")
    for match in GLUED_P.finditer(text):
        quoted = match.group("sq") or match.group("dq")
        value, line_start = match.group("value"), text.rfind("\n", 0, match.start()) + 1
        # -print, -pubkey (find, openssl) are words; a mysql client's -p takes anything
        if (quoted and _literal(quoted)) or (
            value
            and not value.isdigit()
            and (not value.isalpha() or not value.islower() or MYSQL.search(text, line_start, match.start()))
        ):
            found.append("a -p<password> option")
    for match in USER_OPTION.finditer(text):
        value = next((v for v in match.group("dq", "sq", "bare") if v is not None), "")
        if ":" in value and _literal(value.split(":", 1)[1]):
            found.append("a -u user:password option")
    for match in ASSIGNMENT.finditer(text):
        value = next((v for v in match.group("dq", "sq", "bare") if v is not None), "")
        if SECRET_NAME.search(match.group("name")) and _literal(value):
            found.append(match.group("name"))
    if any(_random_looking(m.group(0)) for m in TOKEN.finditer(text) if m.group(0) not in encoded):
        found.append("a high-entropy token")
    return tuple(dict.fromkeys(found))


# shlex.split's rules (POSIX mode, no comments) as regexes: shlex reads one character at a time,
# seconds on the program's 30 kB command lines. A word is a run of pieces: plain characters,
# '...' (literal), "..." (a backslash escapes only `\` and `"`, else it stays) and a backslash
# escaping any character; it ends at a space, tab, CR or LF outside quotes.
# tests/test_policy.py checks shell_words against shlex.split.
_WORD = re.compile(r"""(?:[^ \t\r\n'"\\]++|'[^']*+'|"(?:[^"\\]++|\\.)*+"|\\.)++|(?P<unclosed>['"\\])""", re.S)
_PIECE = re.compile(r"""'(?P<sq>[^']*)'|"(?P<dq>(?:[^"\\]++|\\.)*)"|\\(?P<escaped>.)|(?P<plain>[^'"\\]+)""", re.S)
_DQ_ESCAPE = re.compile(r"\\(.)", re.S)


def _unquote(piece: re.Match) -> str:
    if piece["dq"] is not None:
        return _DQ_ESCAPE.sub(lambda m: m[1] if m[1] in '\\"' else m[0], piece["dq"])
    return next(p for p in piece.group("sq", "escaped", "plain") if p is not None)


def shell_words(text: str) -> list[str]:
    """shlex.split(text): the words, or ValueError for an unclosed quote or a trailing backslash."""
    words = []
    for word in _WORD.finditer(text):
        if word["unclosed"]:
            raise ValueError(f"No closing quotation or escaped character at {word.start()}")
        words.append("".join(map(_unquote, _PIECE.finditer(word[0]))))
    return words


@functools.lru_cache(maxsize=256)
def _words(text: str) -> str:
    """The shell words of a command line, one per line: what each argument is once the shell has
    removed the quoting (`'PG_X=mysql -p'"'"'pw'"'"''` is `PG_X=mysql -p'pw'`)."""
    try:
        return "\n".join(shell_words(text))
    except ValueError:
        return ""


def command_secrets(text: str) -> list[str]:
    """secrets_in over a command line as written and as the shell splits it."""
    return list(dict.fromkeys(secrets_in(text) + secrets_in(_words(text))))


# A step that receives secrets keeps what it prints out of logs and plain state: the handling
# PostalBootstrap._step gives a step with a stdin payload.
HIDDEN_OUTPUTS = {"stdout", "stderr"}
FIX = (
    "Fix: send secrets in the step's stdin payload (the `files` argument of PostalBootstrap._step in "
    "components/bootstrap.py; the VM reads it with pg_read_payload), or keep the secret in a "
    "`pulumi config set --secret` key and pass it as a pulumi secret through stdin."
)


def _check_command(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type not in COMMAND_TYPES:
        return
    places = [(f"`{field}` command line", args.props.get(field)) for field in COMMAND_FIELDS]
    environment = args.props.get("environment") or {}
    places += [
        (f"`environment` value {name}", value if not SECRET_NAME.search(name) else f"{name}={value}")
        for name, value in environment.items()
    ]
    # triggers only decide when a step reruns: a digest does that; a secret there is a copy in plain sight
    places += [(f"`triggers` entry {i}", value) for i, value in enumerate(args.props.get("triggers") or [])]
    for where, text in places:
        if not isinstance(text, str):
            continue
        found = command_secrets(text)
        if found:
            report_violation(
                f"Command '{args.name}' has {', '.join(found)} in its {where}, which is stored "
                f"in plain text in the state and shown in preview diffs. {FIX}",
                args.urn,
            )
    # stdin is where secrets belong, marked secret. The validate API hands a policy secrets as plain
    # values (pulumi_policy 1.21 deserializes props without their secret markers), so the pack checks
    # what it can see: a stdin carrying secret material belongs to a step that hides its output.
    stdin = args.props.get("stdin")
    if isinstance(stdin, str):
        found = secrets_in(stdin)
        hidden = (
            str(args.props.get("logging") or "").lower() == "none"
            and set(args.opts.additional_secret_outputs or []) >= HIDDEN_OUTPUTS
        )
        if found and not hidden:
            report_violation(
                f"Command '{args.name}' sends {', '.join(found)} on its `stdin` but logs its output and keeps "
                "stdout/stderr in plain state: a step that receives secrets must be created the way "
                "PostalBootstrap._step makes one with a payload (a secret stdin, `logging=NONE`, "
                "`additional_secret_outputs=['stdout', 'stderr']`), so an echo of the secret stays secret.",
                args.urn,
            )


def _policy(
    name: str, description: str, validate, level: EnforcementLevel = EnforcementLevel.MANDATORY, config_schema=None
) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=description, validate=validate, enforcement_level=level, config_schema=config_schema
    )


POLICIES: list[ResourceValidationPolicy | StackValidationPolicy] = [
    _policy(
        "no-open-ssh-smtp",
        "Firewall rules that open port 22 (SSH) or 25 (SMTP) must not allow 0.0.0.0/0, any other /0, or "
        "ranges that together cover half of the address space.",
        _firewall_check((22, 25)),
    ),
    # Advisory: opening the web UI to everyone is a choice an operator may make (with a warning).
    _policy(
        "web-ui-not-world-open",
        "Firewall rules that open port 443 (Postal's web UI and API) to most of the Internet are reported.",
        _firewall_check((443,)),
        EnforcementLevel.ADVISORY,
    ),
    _policy(
        "static-ip-protected",
        "The static IP (the Workspace SMTP relay allowlist entry) must be protected, except on an ephemeral "
        "(e2e) stack that is not a production stack.",
        _check_address,
        config_schema=PRODUCTION_SCHEMA,
    ),
    _policy(
        "data-disk-protected",
        "The data disk (MariaDB, Postal config, certificates) must be protected, except on an ephemeral (e2e) "
        "stack that is not a production stack; the boot disk need not be.",
        _check_disk,
        config_schema=PRODUCTION_SCHEMA,
    ),
    _policy(
        "no-ephemeral-in-production",
        "A production stack (the pack's productionStacks config, default prod) must not be ephemeral.",
        _check_ephemeral,
        config_schema=PRODUCTION_SCHEMA,
    ),
    _policy(
        "mail-records-unproxied",
        "Cloudflare DNS records managed by this stack must be DNS-only (proxied: false).",
        _check_dns_record,
    ),
    _policy(
        "no-plain-secrets-in-commands",
        "Command lines and environments of commands must not carry secret material (PEM private keys, "
        "base64 of one, user:password@ URLs, --password/-p options, password fields, random-looking "
        "tokens, PASSWORD/SECRET/TOKEN/KEY assignments); secrets go through the secret stdin payload.",
        _check_command,
    ),
    StackValidationPolicy(
        name="no-open-ssh-smtp-together",
        description="Port 22 (SSH) or 25 (SMTP) must not be open to most of the Internet over all the firewall "
        "rules of a network that open it, taken together.",
        validate=_firewalls_together((22, 25)),
        enforcement_level=EnforcementLevel.MANDATORY,
    ),
    StackValidationPolicy(
        name="web-ui-not-world-open-together",
        description="Port 443 open to most of the Internet over all the firewall rules of a network is reported.",
        validate=_firewalls_together((443,)),
        enforcement_level=EnforcementLevel.ADVISORY,
    ),
]


def policy_named(name: str) -> ResourceValidationPolicy | StackValidationPolicy:
    (match,) = [p for p in POLICIES if p.name == name]
    return match
