"""Certificates for the custom-TLS tests, generated with trustme and cryptography (never by hand)."""

from __future__ import annotations

import datetime
import functools
import subprocess
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "postal.rdo-dev.com"
NOW = datetime.datetime.now(datetime.UTC)


@functools.cache
def _intermediate() -> trustme.CA:
    return trustme.CA().create_child_ca()


def issue(*names: str, days: float = 90, start_days: float = -1) -> tuple[str, str]:
    """(chain PEM leaf first, then the intermediate; key PEM) from a root → intermediate CA."""
    leaf = _intermediate().issue_cert(
        *(names or (HOST,)),
        not_before=NOW + datetime.timedelta(days=start_days),
        not_after=NOW + datetime.timedelta(days=days),
    )
    return "".join(p.bytes().decode() for p in leaf.cert_chain_pems), leaf.private_key_pem.bytes().decode()


@functools.cache
def pair() -> tuple[str, str]:
    """A valid chain and key for HOST."""
    return issue(HOST)


def blocks(chain: str) -> list[str]:
    return [b + "-----END CERTIFICATE-----\n" for b in chain.split("-----END CERTIFICATE-----\n") if b.strip()]


def common_name_only(name: str = HOST) -> tuple[str, str]:
    """A self-signed certificate naming `name` only in its subject CN (no subjectAltName)."""
    return _self_signed(name, lambda builder: builder)


def encrypted(key_pem: str, passphrase: bytes = b"hunter22") -> str:
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(passphrase)
    ).decode()


def rsa_issue(pkcs8: bool = False) -> tuple[str, str]:
    """(chain PEM, RSA key PEM: PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`) from an RSA CA, for HOST."""
    leaf = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert(HOST)
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    form = serialization.PrivateFormat.PKCS8 if pkcs8 else serialization.PrivateFormat.TraditionalOpenSSL
    return (
        "".join(p.bytes().decode() for p in leaf.cert_chain_pems),
        key.private_bytes(serialization.Encoding.PEM, form, serialization.NoEncryption()).decode(),
    )


def self_signed(name: str = HOST) -> tuple[str, str]:
    """A self-signed certificate for `name` (subjectAltName, CA flag set, as `openssl req -x509` makes it)."""
    return _self_signed(
        name,
        lambda builder: builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
        ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True),
    )


def _self_signed(name: str, extend) -> tuple[str, str]:
    """(certificate PEM, PKCS#8 key PEM): P-256, valid from yesterday for 90 days, `extend` adds extensions."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=90))
    )
    cert = extend(builder).sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def with_ec_parameters(key_pem: str) -> str:
    """An EC key as `openssl ecparam -name prime256v1 -genkey` writes it: the curve's block, then the SEC 1 key."""
    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    assert isinstance(key.curve, ec.SECP256R1)  # BggqhkjOPQMBBw== is P-256's OID in DER (06 08 2a 86 48 ce 3d 03 01 07)
    return (
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
        + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode()
    )


def openssl_self_signed(cert: Path, key: Path, name: str, days: int, san: bool = True) -> tuple[Path, Path]:
    """A self-signed RSA-2048 pair written by `openssl req -x509`, as an operator makes one by hand."""
    extra = ["-addext", f"subjectAltName=DNS:{name}"] if san else []
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert)]
    subprocess.run([*command, "-days", str(days), "-subj", f"/CN={name}", *extra], check=True, capture_output=True)
    return cert, key
