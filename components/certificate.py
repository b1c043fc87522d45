"""Checks a custom certificate chain and its private key with `cryptography`, before any resource.

Problems are returned as (config key, problem[, fix]) whose text never quotes the PEM values.
The chain is returned leaf first, each certificate followed by its issuer (what Caddy and Go's
`tls.X509KeyPair` expect): a chain given in another order is reordered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

CERT, KEY = "tlsCertificate", "tlsPrivateKey"


@dataclass(frozen=True)
class CheckedPair:
    chain_pem: str  # leaf first
    expires: datetime  # the leaf's notAfter (UTC)
    incomplete: bool = False  # a leaf not self-signed, without its issuer
    self_signed: bool = False  # the leaf is its own issuer


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def covers(pattern: str, hostname: str) -> bool:
    """RFC 6125 as Go applies it: exact name, or `*.` as the whole left-most label of ≥ 3 labels."""
    pattern, hostname = pattern.lower().rstrip("."), hostname.lower()
    if pattern == hostname:
        return True
    if not pattern.startswith("*.") or pattern.count(".") < 2:
        return False
    first, _, rest = hostname.partition(".")
    return bool(first) and rest == pattern[2:]


def _issuer_of(cert: x509.Certificate, candidates: list) -> x509.Certificate | None:
    for candidate in candidates:
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return candidate
    return None


def check_pair(
    chain_pem: str, key_pem: str, hostname: str, now: datetime, shown_hostname: str | None = None
) -> tuple[CheckedPair | None, list]:
    """(checked pair, []) or (None, [(key, problem[, fix]), …]); messages name the host as `shown_hostname`."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem.encode())
    except ValueError:
        return None, [(CERT, "a PEM block does not parse as an X.509 certificate")]
    certs = list({c.fingerprint(hashes.SHA256()): c for c in certs}.values())  # `cat cert.pem fullchain.pem`
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except TypeError:
        return None, [
            (
                KEY,
                "is encrypted with a passphrase, which Caddy cannot use",
                "openssl pkey -in key.pem -out plain-key.pem (asks the passphrase), then "
                "pulumi config set --secret tlsPrivateKey < plain-key.pem",
            )
        ]
    except (ValueError, UnsupportedAlgorithm):
        return None, [(KEY, "does not parse as a private key")]
    leaf = next((c for c in certs if _spki(c.public_key()) == _spki(key.public_key())), None)
    if leaf is None:
        return None, [(KEY, "does not belong to any certificate in tlsCertificate (mismatched pair)")]

    chain, rest = [leaf], [c for c in certs if c is not leaf]
    while rest and chain[-1].issuer != chain[-1].subject:
        issuer = _issuer_of(chain[-1], rest)
        if issuer is None:
            break
        chain.append(issuer)
        rest.remove(issuer)
    problems = []
    if rest:
        problems.append(
            (
                CERT,
                f"{len(rest)} certificate(s) do not belong to the chain of the certificate that "
                "matches the key (another site's chain?)",
            )
        )
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        names = []
    if not any(covers(name, hostname) for name in names):
        problems.append(
            (
                CERT,
                f"does not cover hostname {shown_hostname or hostname}: no subjectAltName DNS "
                "name or wildcard matches it (the common name is ignored)",
            )
        )
    for position, cert in enumerate(chain):
        which = "the certificate" if position == 0 else "an intermediate certificate"
        if now > cert.not_valid_after_utc:
            problems.append((CERT, f"{which} expired on {cert.not_valid_after_utc:%Y-%m-%d}"))
        elif now < cert.not_valid_before_utc:
            problems.append((CERT, f"{which} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"))
    if problems:
        return None, problems
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)
    self_signed = leaf.issuer == leaf.subject and _issuer_of(leaf, [leaf]) is leaf
    return CheckedPair(pem, leaf.not_valid_after_utc, len(chain) == 1 and not self_signed, self_signed), []
