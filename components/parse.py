"""Value parsers for the config contract: each takes the raw string Pulumi gives and returns the
typed value, or raises `Invalid` with a problem that never repeats a secret value."""

from __future__ import annotations

import ipaddress
import json
import re
import unicodedata
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

MIN_POSTAL_VERSION = (3, 3, 1)  # smtp_relays were broken before 3.3.1
MIN_MEMORY_GB = 4
# Predefined x86 machine types with less than the 4 GB Postal needs, with their memory in GB, from
# https://cloud.google.com/compute/docs/general-purpose-machines (E2, E2 shared-core, N1, N1
# shared-core, N2, N2D) and https://cloud.google.com/compute/docs/compute-optimized-machines (C4D).
# Every other predefined type of those pages has at least 4 GB (e2-medium, n4-highcpu-2,
# c4-highcpu-2, c2d-highcpu-2, t2d-standard-1: exactly 4).
SMALL_MACHINE_TYPES = {
    "f1-micro": 0.6,
    "g1-small": 1.7,
    "e2-micro": 1,
    "e2-small": 2,
    "e2-highcpu-2": 2,
    "n1-standard-1": 3.75,
    "n1-highcpu-2": 1.8,
    "n1-highcpu-4": 3.6,
    "n2-highcpu-2": 2,
    "n2d-highcpu-2": 2,
    "c4d-highcpu-2": 3,
}
# Arm (arm64) series: Tau T2A, C4A and N4A (Axion), A4X (Grace). Postal publishes its image for
# linux/amd64 only (postalserver/postal .github/workflows/ci.yml at 3.3.6: `platforms: linux/amd64`).
ARM_SERIES = ("t2a", "c4a", "n4a", "a4x")
OUR_LABELS = ("app", "stack")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


# Every pattern is applied with re.fullmatch (a `$` would let a trailing newline through).
_TOKEN = re.compile(r"[!-~]+")  # printable ASCII: no whitespace, no control character
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_TLD = re.compile(r"[a-z][a-z0-9-]*[a-z0-9]")
# Local part of an e-mail address: the common subset, free of Caddyfile syntax (braces, quotes,
# backticks, `#`, `$`) since adminEmail is rendered into the Caddyfile.
_EMAIL_LOCAL = re.compile(r"(?![.])(?!.*[.]{2})[A-Za-z0-9._%+-]{1,64}(?<![.])")
_VERSION = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")
_MACHINE_TYPE = re.compile(r"[a-z][a-z0-9]*-[a-z0-9-]+")
_CUSTOM_MACHINE = re.compile(r"(?:[a-z0-9]+-)?custom-(?:[0-9]+|micro|small|medium)-([0-9]+)(?:-ext)?")
_GCP_LABEL_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_GCP_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_PROJECT = re.compile(r"(?:[a-z0-9][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION = re.compile(r"[a-z]+-[a-z]+[0-9]+")
_ZONE = re.compile(r"([a-z]+-[a-z]+[0-9]+)-[a-z]")
_PEM_LABEL = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----")


class Invalid(ValueError):
    """A bad value: `problem` never contains the value; `item` (the offending part) may."""

    def __init__(self, problem: str, item: Any = None):
        super().__init__(problem)
        self.problem, self.item = problem, item


def _token(raw: Any) -> str:
    """A single word of printable ASCII: whitespace, control characters and non-ASCII are refused."""
    text = str(raw)
    if not text:
        raise Invalid("an empty value")
    if any(c.isspace() or unicodedata.category(c) in ("Cf", "Zs") for c in text if not c.isascii()):
        raise Invalid("contains an invisible character (a non-breaking or zero-width space, pasted with the value?)")
    if not text.isascii():
        raise Invalid(
            "contains a non-ASCII character (a look-alike letter? write an international domain name in its xn-- form)"
        )
    if not _TOKEN.fullmatch(text):
        raise Invalid("contains whitespace or a control character (a trailing newline?)")
    return text


_KINDS = {int: "a whole number", list: "a list", dict: "a map"}


def _json(raw: str, kind: type) -> Any:
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise Invalid(f"not {_KINDS[kind]}")
    return value


def _items(raw: str, parse: Callable[[str], Any]) -> list:
    """A non-empty JSON list, each item parsed; an error names the item."""
    items = _json(raw, list)
    if not items:
        raise Invalid("the list is empty")
    parsed = []
    for item in items:
        if not isinstance(item, str):
            raise Invalid("not a quoted string (one value per item, no nested lists)", json.dumps(item))
        try:
            parsed.append(parse(item))
        except Invalid as err:
            raise Invalid(err.problem, item) from None
    return parsed


def parse_domain(raw: str) -> str:
    name = _token(raw).lower().removesuffix(".")
    if "://" in name:
        raise Invalid("a URL; give the host name alone")
    if re.fullmatch(r"[^:]+:[0-9]*", name):
        raise Invalid("includes a :port; give the name alone (ports have their own keys)")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise Invalid("not a fully qualified domain name")
    if not _TLD.fullmatch(labels[-1]):
        raise Invalid("the top-level label must be alphabetic")
    return name


def parse_domains(raw: str) -> tuple[str, ...]:
    domains = _items(raw, parse_domain)
    for domain in domains:
        if domains.count(domain) > 1:
            raise Invalid("listed twice (letter case and a final dot do not count)", domain)
    return tuple(domains)


def parse_email(raw: str) -> str:
    local, sep, domain = _token(raw).rpartition("@")
    if not sep or not _EMAIL_LOCAL.fullmatch(local):
        raise Invalid("not an e-mail address of letters, digits and . _ % + - before the @")
    return f"{local}@{parse_domain(domain)}"


def _cidr(item: Any) -> str:
    text = _token(item)
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError as err:  # ipaddress's message repeats (parts of) the item: name the problem only
        raise Invalid("has host bits set" if "host bits" in str(err) else "not an IPv4 CIDR range") from None
    if network.version != 4:
        raise Invalid("IPv6; the VM has no IPv6 address")
    if network.is_unspecified or network.is_loopback or network.is_multicast:
        raise Invalid("never the source of a connection (0.0.0.0/0 is every address)")
    return str(network)


def parse_cidrs(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_items(raw, _cidr)))


def parse_int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = _json(_token(raw), int)
        if not low <= value <= high:
            raise Invalid(f"outside {low}..{high}")
        return value

    return parse


def parse_choice(choices) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = _token(raw).lower()
        if value not in choices:
            raise Invalid(f"not one of {', '.join(choices)}")
        return value

    return parse


def parse_bool(raw: str) -> bool:
    return parse_choice(("true", "false"))(raw) == "true"


def parse_version(raw: str) -> str:
    match = _VERSION.fullmatch(_token(raw))
    if not match:
        raise Invalid("not X.Y.Z")
    if tuple(int(part) for part in match.groups()) < MIN_POSTAL_VERSION:
        raise Invalid("Postal's smtp_relays work from 3.3.1 on")
    return raw


def parse_machine_type(raw: str) -> str:
    value = _token(raw).lower()
    if not _MACHINE_TYPE.fullmatch(value):
        raise Invalid("not a Compute Engine machine type")
    if value.split("-")[0] in ARM_SERIES:
        raise Invalid("an Arm (arm64) type; Postal publishes its container image for linux/amd64 only")
    custom = _CUSTOM_MACHINE.fullmatch(value)
    memory = int(custom.group(1)) / 1024 if custom else SMALL_MACHINE_TYPES.get(value)
    if memory is not None and memory < MIN_MEMORY_GB:
        raise Invalid(f"{memory:g} GB of memory, less than the {MIN_MEMORY_GB} GB Postal needs")
    return value


def parse_relay_host(raw: str) -> str:
    try:
        ipaddress.ip_address(_token(raw))
    except ValueError:
        return parse_domain(raw)
    raise Invalid("an IP address; Postal resolves the relay by DNS name")


def parse_labels(raw: str) -> tuple[tuple[str, str], ...]:
    labels = {k: json.dumps(v) if isinstance(v, (bool, int)) else v for k, v in _json(raw, dict).items()}
    for key, value in labels.items():
        try:
            ok = _GCP_LABEL_KEY.fullmatch(_token(key)) and _GCP_LABEL_VALUE.fullmatch(str(value))
        except Invalid as err:
            raise Invalid(err.problem, key) from None
        if not ok:
            raise Invalid(
                "breaks GCP's rules (lowercase letters, digits, _ and -; keys start with a letter)", f"{key}={value}"
            )
        if key in OUR_LABELS:
            raise Invalid(
                f"{key} is the stack's own label ({' and '.join(OUR_LABELS)} find its resources); use another key"
            )
    if len(labels) + len(OUR_LABELS) > 64:
        raise Invalid(f"more than {64 - len(OUR_LABELS)} labels (GCP allows 64, the stack sets {len(OUR_LABELS)})")
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


# A name, or the partial and full URLs pulumi_gcp's Disk.snapshot takes (gcloud's selfLink is the full one).
_SNAPSHOT = re.compile(
    r"(?:(?:https://www\.googleapis\.com/compute/v1/)?(?:projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/)?"
    r"global/snapshots/)?[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?"
)


def parse_snapshot(raw: str) -> str:
    if not _SNAPSHOT.fullmatch(_token(raw)):
        raise Invalid("not a snapshot name")
    return raw


# A Docker image reference: [registry[:port]/]path[:tag][@sha256:digest] (distribution/reference grammar).
_IMAGE = re.compile(
    r"(?:[a-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
_WINDOW = re.compile(r"([A-Za-z]{3}) ([01][0-9]|2[0-3]):([0-5][0-9])")


def parse_image(raw: str) -> str:
    value = _token(raw)
    if not _IMAGE.fullmatch(value):
        raise Invalid("not an image reference")
    if ":" not in value.rsplit("/", 1)[-1] and "@" not in value:
        raise Invalid("no tag or digest: an untagged image follows :latest")
    return value


def parse_window(raw: str) -> str:
    """`<Day> HH:MM` in UTC, e.g. `Sun 02:00`."""
    match = _WINDOW.fullmatch(raw)
    if not match or match.group(1).title() not in WEEKDAYS:
        raise Invalid("not <Day> HH:MM")
    return f"{match.group(1).title()} {match.group(2)}:{match.group(3)}"


def parse_pem(kind: str) -> Callable[[str], str]:
    """The shape of a PEM value; `certificate.check_pair` checks the content."""

    def parse(raw: str) -> str:
        labels = _PEM_LABEL.findall(raw)
        if not any(label.endswith(kind) for label in labels):
            raise Invalid(f"no PEM {kind} block")
        # `openssl ecparam -genkey` writes the curve before the key; Go's tls.X509KeyPair (Caddy) skips it
        other = next((label for label in labels if not label.endswith(kind) and label != "EC PARAMETERS"), None)
        if other:
            raise Invalid(f"holds a PEM {other} block besides the {kind}; keep only {kind} blocks here")
        return raw.lstrip("\ufeff").strip() + "\n"  # Go's PEM decoder (Caddy) fails on a byte-order mark

    return parse


def _pattern(pattern: re.Pattern, problem: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not pattern.fullmatch(_token(raw)):
            raise Invalid(problem)
        return raw

    return parse


# Cloud Storage bucket names (https://cloud.google.com/storage/docs/buckets#naming): 3-63 characters
# of lowercase letters, digits, dashes, underscores and dots, starting and ending with a letter or
# digit, not starting with "goog" nor containing "google". Dotted (domain) names need domain
# verification and are left out.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]")


def parse_bucket(raw: str) -> str:
    """A bucket name; `gs://name` and a trailing slash are accepted and dropped."""
    name = _token(raw).removeprefix("gs://").rstrip("/")
    if "/" in name:
        raise Invalid("a path inside a bucket; give the bucket name alone (the stack's objects go under <stack>/)")
    if not _BUCKET.fullmatch(name):
        raise Invalid("not a bucket name (3-63 lowercase letters, digits, dashes and underscores)")
    if name.startswith("goog") or "google" in name:
        raise Invalid('Cloud Storage refuses names that start with "goog" or contain "google"')
    return name


_PUBLIC_BLOCK = "-----BEGIN PGP PUBLIC KEY BLOCK-----"


def parse_openpgp_public_key(raw: str) -> str:
    """One ASCII-armored OpenPGP v4 public key (what `gpg --armor --export` writes) that can encrypt
    now: gpg on the VM encrypts the backups to it. Read by Sequoia-PGP (pysequoia); a trial
    encryption proves a valid encryption-capable (sub)key."""
    import pysequoia  # imported here: only this key needs it

    text = raw.lstrip("\ufeff").strip()
    if "PRIVATE KEY BLOCK" in text:
        raise Invalid(
            "is a PRIVATE key: set only the public key (gpg --armor --export <fingerprint>); the private "
            "key must never reach the stack or the VM"
        )
    if _PUBLIC_BLOCK not in text:
        raise Invalid(f"no ASCII-armored OpenPGP public key ({_PUBLIC_BLOCK})")
    try:
        certs = pysequoia.Cert.split_bytes(text.encode())
    except (RuntimeError, ValueError) as err:
        raise Invalid(f"not a readable OpenPGP key ({str(err).splitlines()[0]})") from None
    if len(certs) != 1:
        raise Invalid(f"holds {len(certs)} keys; set exactly one")
    cert = certs[0]
    with warnings.catch_warnings():  # pysequoia 0.1.35 deprecates the check in favour of its Tsk type
        warnings.simplefilter("ignore", DeprecationWarning)
        secret = cert.has_secret_keys
    if secret:
        raise Invalid("holds private key material; set only the public key (gpg --armor --export <fingerprint>)")
    if len(cert.fingerprint) != 40:
        raise Invalid(
            "not a version 4 key: gpg 2.3 on Rocky Linux 9 reads only v4 keys (gpg --quick-gen-key makes one)"
        )
    if cert.is_revoked:
        raise Invalid("the key is revoked")
    expires = cert.expiration  # the primary key's; gpg refuses an expired key ("unusable public key")
    if expires is not None and expires <= datetime.now(UTC):
        raise Invalid(f"the key expired on {expires:%Y-%m-%d}; extend it (gpg --quick-set-expire) and export it again")
    try:
        pysequoia.encrypt(b"", recipients=[cert])
    except (RuntimeError, ValueError):
        raise Invalid(
            "has no valid encryption key (expired, revoked, or a signing-only key); add an encryption subkey "
            "(gpg --quick-add-key <fingerprint> cv25519 encr) or generate a new key"
        ) from None
    return text + "\n"


def openpgp_fingerprint(armored: str) -> str:
    """The upper-case v4 fingerprint of a key `parse_openpgp_public_key` accepted."""
    import pysequoia

    return pysequoia.Cert.from_bytes(armored.encode()).fingerprint.upper()
