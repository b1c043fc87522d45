"""TXT records as Cloudflare stores them (no drift), and the SPF/DMARC guard on quoted content.

Cloudflare's DNS records API, TXTRecord.content: "The content must consist of quoted 'character
strings' (RFC 1035), each with a length of up to 255 bytes. Strings exceeding this allowed maximum
length are automatically split." The API returns TXT content in that stored form, so the fake
Cloudflare answers below carry the quotes, and the long records are checked with dnspython's
zone-file parser (RFC 1035 presentation format).
"""

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import program
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from components import dns as mail_dns
from components.render import dkim_txt

OURS = "managed by postal-gateway (prod)"


def strings(content):
    """The character-strings of TXT content in presentation format, as a DNS server would serve them."""
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, content).strings


@pytest.fixture(scope="module")
def dkim_2048():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return dkim_txt(pem.decode())


def test_a_2048_bit_dkim_record_is_quoted_255_byte_strings(dkim_2048):
    assert len(dkim_2048) > 255
    content = mail_dns.cloudflare_txt(dkim_2048)
    parts = strings(content)
    assert [len(p) for p in parts] == [255, len(dkim_2048) - 255]
    assert b"".join(parts).decode() == dkim_2048 == mail_dns.txt_text(content)
    assert content == f'"{dkim_2048[:255]}" "{dkim_2048[255:]}"'


def test_short_txt_records_are_left_as_they_are():
    spf = "v=spf1 include:spf.postal.rdo-dev.com ~all"
    assert mail_dns.cloudflare_txt(spf) == spf == mail_dns.txt_text(spf)
    assert mail_dns.cloudflare_txt("x" * 255) == "x" * 255
    assert mail_dns.txt_text('"a \\"quoted\\" word" "b\\\\c"') == 'a "quoted" wordb\\c'


def test_the_program_publishes_long_txt_split_and_reports_it_joined(run):
    txt = [r.inputs for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord") if r.inputs["type"] == "TXT"]
    long = [r for r in txt if r["content"].startswith('"')]
    assert len(long) == 3  # rp.<hostname> and both sending domains' DKIM keys
    published = {(r["name"], r["type"]): r["content"] for r in run.outputs["dnsRecords"][0]}
    for record in long:
        parts = strings(record["content"])
        assert all(len(p) <= 255 for p in parts) and len(parts) > 1
        joined = b"".join(parts).decode()
        assert joined.startswith("v=DKIM1; t=s; h=sha256; p=")
        assert published[(record["name"], "TXT")] == joined  # what a resolver (and the smoke test) sees
    assert all(not r["content"].startswith('"') for r in txt if r not in long)


def guard(existing):
    return program.run(txt_records={"rdo-dev.com": existing})


@pytest.mark.parametrize(
    "content",
    [
        '"v=spf1 include:_spf.google.com ~all"',  # how Cloudflare returns it
        '"v=spf1 include:_spf.google.com" " include:mailgun.org ~all"',  # a long one, split
        "V=SPF1 -all",  # the version tag is case-insensitive (RFC 7208 4.5 / RFC 5234)
    ],
)
def test_a_foreign_spf_record_is_found_however_it_is_quoted(content):
    run = guard([{"content": content, "comment": None}])
    assert isinstance(run.error, mail_dns.DnsConflictError) and run.resources == []
    assert f"rdo-dev.com already has {mail_dns.txt_text(content)!r}" in str(run.error)


def test_quoted_records_that_are_not_spf_or_ours_pass_the_guard():
    spec = mail_dns.RecordSpec(
        "rdo-dev.com-spf", "rdo-dev.com", "TXT", "v=spf1 include:spf.postal.rdo-dev.com ~all", "rdo-dev.com"
    )
    existing = [
        {"type": "TXT", "content": '"google-site-verification=abc"', "comment": None},
        {"type": "TXT", "content": '"v=spf10 is not spf"', "comment": None},
        {"type": "TXT", "content": '"v=spf1 include:spf.postal.rdo-dev.com ~all"', "comment": OURS},
    ]
    assert mail_dns.find_conflicts([spec], {"rdo-dev.com": existing}, OURS) == []
    foreign = existing + [{"type": "TXT", "content": '"v=spf1 -all"', "comment": None}]
    (problem,) = mail_dns.find_conflicts([spec], {"rdo-dev.com": foreign}, OURS)
    assert problem.startswith("rdo-dev.com already has 'v=spf1 -all' (TXT). Fix: merge")
