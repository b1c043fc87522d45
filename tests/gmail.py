"""Test messages as Postal signs them, Google's relay passes them on and Gmail files them.

- Postal 3.3.6 signs with the domain's key (relaxed/relaxed, its header list: app/lib/dkim_header.rb), then
  prepends `DKIM-Signature` and `X-Postal-MsgID` (lib/postal/message_db/message.rb add_outgoing_headers).
  Here the signature is made by dkimpy with a key generated like the stack's (components/secrets.py:
  RSA-2048, PKCS#1 PEM as pulumi_tls writes it) and a record from components.render.dkim_txt.
- Gmail prepends, as its "Show original" shows them: Return-Path, Received, Received-SPF (RFC 7208 §9.1),
  Authentication-Results (RFC 8601 §2.2; shape of a captured Gmail header:
  `mx.google.com; spf=pass (google.com: domain of x designates 209.85.220.41 as permitted sender)
  smtp.mailfrom=x; dmarc=fail (p=QUARANTINE sp=NONE dis=QUARANTINE) header.from=y`,
  suped.com/email-deliverability/answers/how-do-i-fix-apple-mail-dmarc-failure-when-sending-from-gmail-with-a-non-gmail-domain),
  then its own ARC set (i=1, d=google.com, RFC 8617 §4) sealed here by dkimpy with a test key.
"""

from __future__ import annotations

import functools
import random

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from components.render import dkim_txt

RELAY_IP = "209.85.220.41"  # in Google's _netblocks.google.com (209.85.128.0/17)
# Postal's signed headers, in its order (app/lib/dkim_header.rb normalized_headers), those a test message has
POSTAL_SIGNED = (b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type")
DATE = "Mon, 07 Dec 2026 13:00:00 +0000"


@functools.cache
def key(name: str) -> tuple[bytes, str]:
    """(private key PEM, DKIM TXT record) for a name: RSA-2048 like the stack's tls.PrivateKey."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, dkim_txt(public.decode())


def selector(domain: str) -> str:
    """6 upper-case letters like the stack's (random.RandomString, upper only), stable per domain."""
    rng = random.Random(domain)
    return "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(6))


def postal(
    sender: str,
    rcpt: str,
    subject: str,
    postal_token: str,
    *,
    sign_domain: str | None = None,
    sign_selector: str | None = None,
    sign_key: str | None = None,
    body: str = "Sent by scripts/smoke_test.py through postal.example.com.\r\n",
    extra_headers: tuple[str, ...] = (),
) -> bytes:
    """The message as Postal hands it to the relay. sign_domain defaults to the From domain, its key to
    key(domain) and selector to postal-<selector(domain)>."""
    domain = sender.rpartition("@")[2]
    d = sign_domain or domain
    s = sign_selector or f"postal-{selector(d)}"
    headers = [
        *extra_headers,
        f"Date: {DATE}",
        f"From: {sender}",
        f"To: {rcpt}",
        f"Message-ID: <{postal_token}@rp.postal.example.com>",
        f"Subject: {subject}",
        "Mime-Version: 1.0",
        "Content-Type: text/plain; charset=UTF-8",
        "Content-Transfer-Encoding: 7bit",
    ]
    message = ("\r\n".join(headers) + "\r\n\r\n" + body).encode()
    signature = dkim.sign(
        message,
        s.encode(),
        d.encode(),
        key(sign_key or d)[0],
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=list(POSTAL_SIGNED),
    )
    return signature + f"X-Postal-MsgID: {postal_token}\r\n".encode() + message


def relayed(message: bytes, rcpt: str) -> bytes:
    """Google's SMTP relay adds its Received line (from Postal's HELO and the VM's address)."""
    return (
        "Received: from postal.example.com (postal.example.com. [203.0.113.10])\r\n"
        "        by smtp-relay.gmail.com with ESMTPS id a1-20020a05600c000000b00000000000000si0.0\r\n"
        f"        for <{rcpt}>\r\n"
        "        (version=TLS1_3 cipher=TLS_AES_256_GCM_SHA384 bits=256/256);\r\n"
        f"        {DATE}\r\n"
    ).encode() + message


def received(
    message: bytes,
    rcpt: str,
    results: str,
    *,
    mailfrom: str,
    spf: str = "pass",
    client_ip: str = RELAY_IP,
    authserv_id: str = "mx.google.com",
    seal: bool = True,
    seal_domain: str = "google.com",
) -> bytes:
    """What the receiving Gmail server prepends: `results` is the Authentication-Results value after the
    authserv-id (e.g. 'dkim=pass header.i=@example.com …; spf=…; dmarc=…')."""
    said = "designates" if spf == "pass" else "does not designate"
    spf_comment = f"(google.com: domain of {mailfrom} {said} {client_ip} as permitted sender)"
    trace = (
        f"Return-Path: <{mailfrom}>\r\n"
        "Received: from smtp-relay.gmail.com (smtp-relay.gmail.com. [" + client_ip + "])\r\n"
        f"        by {authserv_id} with SMTPS id b2-20020a05600c000000b00000000000000sor0.0\r\n"
        f"        for <{rcpt}>\r\n"
        "        (Google Transport Security);\r\n"
        f"        {DATE}\r\n"
        f"Received-SPF: {spf} {spf_comment} client-ip={client_ip};\r\n"
        f"Authentication-Results: {authserv_id};\r\n       " + results.replace("; ", ";\r\n       ") + "\r\n"
    ).encode()
    message = trace + message
    if seal:
        arc = dkim.arc_sign(
            message,
            b"arc-20240605",
            seal_domain.encode(),
            key(seal_domain)[0],
            authserv_id.encode(),
            timestamp="1796648400",
        )
        message = b"".join(arc) + message
    return f"Delivered-To: {rcpt}\r\n".encode() + message


def results(domain: str, mailfrom: str, *, dkim_: str = "pass", spf: str = "pass", dmarc: str = "pass", **more) -> str:
    """Gmail's Authentication-Results value for a message from `domain` (after the authserv-id)."""
    d = more.get("dkim_domain", domain)
    parts = [
        f"dkim={dkim_} header.i=@{d} header.s=postal-{selector(d)} header.b=AbCdEfGh",
        f"spf={spf} (google.com: domain of {mailfrom} designates {RELAY_IP} as permitted sender) smtp.mailfrom={mailfrom}",
        f"dmarc={dmarc} (p=NONE sp=NONE dis=NONE) header.from={domain}",
    ]
    if "arc" in more:
        parts.append(f"arc={more['arc']}")
    return "; ".join(parts)
