"""Pure renderers: the files and command lines the bootstrap steps send to the VM."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "remote"
INSTALL_REPO = "https://github.com/postalserver/install"
INSTALL_COMMIT = "c82658da7fa16615a2fba9bae2d02c860816fdb3"  # 2024-03-21, "add `version` command"
MARIADB_IMAGE = "mariadb:11.4"  # defaults of mariadbImage / caddyImage
CADDY_IMAGE = "caddy:2.10"
UPTIME_CHECK_PATH = "/login"  # the HTTPS uptime check's GET (components/monitoring.py LOGIN_PATH)
UPTIME_CHECKER_MATCHER = "uptime_checker_beyond_login"
CONFIG_DIR = "/config"  # /opt/postal/config inside Postal's containers
CERT_DIR = "/certs"  # /opt/postal/caddy/live/certs inside postal-caddy
# Caddy's admin API listens on a unix socket inside postal-caddy, never on TCP 2019 of the host
# network; `caddy reload --address` reaches it through `docker exec`.
CADDY_ADMIN = "unix//run/caddy-admin.sock"
HOST_DATA_DIR = "/opt/postal"  # the data disk; Postal's compose file mounts its config/ as /config
SMTP_TLS_DIR = "smtp-tls"  # under config/: the certificate Postal's SMTP server offers with STARTTLS
# Where Caddy (data dir /data = <data disk>/caddy-data, storage caddy/) keeps the certificate of
# each TLS mode, per issuer: Let's Encrypt, or ZeroSSL when Let's Encrypt fails (Caddy's default
# issuers once an e-mail is set), or its internal CA ("local"); tls=custom: the caddy step's pair.
CADDY_STORAGE = f"{HOST_DATA_DIR}/caddy-data/caddy"
CADDY_ISSUERS = {
    "letsencrypt": ("acme-v02.api.letsencrypt.org-directory", "acme.zerossl.com-v2-dv90"),
    "internal": ("local",),
}
CADDY_ROOT_CA = f"{CADDY_STORAGE}/pki/authorities/local/root.crt"  # tls=internal: what clients trust
CADDY_CUSTOM_CERTS = f"{HOST_DATA_DIR}/caddy/live/certs"  # CERT_DIR on the host (caddy.sh)
ORGANIZATION = {"name": "Postal Gateway", "permalink": "postal-gateway"}
SERVER = {"name": "Gateway", "permalink": "gateway", "mode": "Live"}
API_CREDENTIAL = "postal-gateway-api"
SMTP_CREDENTIAL = "postal-gateway-smtp"
# Postal's own mail (password resets, notices) goes to its SMTP server on 127.0.0.1:25 without
# SMTP AUTH; an SMTP-IP credential lets it relay like any authenticated client.
LOCAL_CREDENTIAL = {"type": "SMTP-IP", "name": "postal-gateway-localhost", "key": "127.0.0.1"}


RETURN_PATH_PREFIX = "psrp"  # Postal's dns.custom_return_path_prefix (its default)


def derived_names(hostname: str) -> dict[str, str]:
    """Names Postal derives from hostname (postal.yml `dns`), keyed by prefix: rp, spf, routes, track."""
    return {prefix: f"{prefix}.{hostname}" for prefix in ("rp", "spf", "routes", "track")}


def custom_return_path(domain: str) -> str:
    """A sending domain's return-path name: Postal's MAIL FROM is <token>@psrp.<domain> once it checks OK."""
    return f"{RETURN_PATH_PREFIX}.{domain}"


def dkim_txt(public_key_pem: str) -> str:
    """Postal's DKIM record for a PEM public key: `v=DKIM1; t=s; h=sha256; p=<base64 DER>;`."""
    body = re.sub(r"-----[A-Z ]+-----", "", public_key_pem)
    return f"v=DKIM1; t=s; h=sha256; p={''.join(body.split())};"


def postal_yml(*, hostname: str, relay_url: str, db_password: str, rails_secret_key: str, from_address: str) -> str:
    """postal.yml in Postal's `version: 2` schema (lib/postal/config_schema.rb)."""
    database = {"host": "127.0.0.1", "port": 3306, "username": "postal", "password": db_password}
    names = derived_names(hostname)
    config = {
        "version": 2,
        "postal": {
            "web_hostname": hostname,
            "web_protocol": "https",
            "smtp_hostname": hostname,
            "use_ip_pools": False,
            "signing_key_path": f"{CONFIG_DIR}/signing.key",
            "smtp_relays": [relay_url],
        },
        "web_server": {"default_bind_address": "127.0.0.1", "default_port": 5000},
        "main_db": {**database, "database": "postal"},
        "message_db": {**database, "database_name_prefix": "postal"},
        # STARTTLS with the web's certificate, copied in by the smtp-tls step and its renewal hook.
        "smtp_server": {
            "default_port": 25,
            "default_bind_address": "0.0.0.0",
            "tls_enabled": True,
            "tls_certificate_path": f"{CONFIG_DIR}/{SMTP_TLS_DIR}/cert.pem",
            "tls_private_key_path": f"{CONFIG_DIR}/{SMTP_TLS_DIR}/key.pem",
        },
        "dns": {
            "mx_records": [hostname],
            "spf_include": names["spf"],
            "return_path_domain": names["rp"],
            "route_domain": names["routes"],
            "track_domain": names["track"],
            "helo_hostname": hostname,
        },
        "smtp": {"host": "127.0.0.1", "port": 25, "from_name": "Postal", "from_address": from_address},
        "logging": {"enabled": True},
        "rails": {"environment": "production", "secret_key": rails_secret_key},
    }
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


# tls=internal: Caddy's internal issuer signs 12-hour leaves with a 7-day intermediate by default, so
# the web's certificate, and with it Postal's SMTP certificate (a restart of the smtp container each
# time), would change several times a day. Leaves signed by the 10-year root itself (sign_with_root)
# may live INTERNAL_LIFETIME (modules/caddytls/internalissuer.go clamps a leaf only to its signer's
# NotAfter); Caddy renews one with a third of its life left, so the SMTP server restarts about every
# 60 days, as with Let's Encrypt's 90-day certificates. Clients trust the same root as before.
INTERNAL_LIFETIME = "90d"


def caddyfile(
    *, hostname: str, tls: str, admin_email: str, uptime_checkers: Sequence[str] = (), cert_dir: str = CERT_DIR
) -> str:
    """Caddyfile for the TLS mode: letsencrypt (ACME, account e-mail), internal or custom. Requests from
    `uptime_checkers` (Google's, which any Cloud customer can aim at the VM with any method, headers and
    body) get 403 unless they are `GET /login`, the uptime check's own request."""
    site_tls = {
        "letsencrypt": "",
        "internal": f"\ttls {{\n\t\tissuer internal {{\n\t\t\tlifetime {INTERNAL_LIFETIME}\n"
        "\t\t\tsign_with_root\n\t\t}\n\t}\n",
        "custom": f"\ttls {cert_dir}/cert.pem {cert_dir}/key.pem\n",
    }[tls]
    email = f"\temail {admin_email}\n" if tls == "letsencrypt" else ""
    checkers = ""
    if uptime_checkers:
        checkers = (
            f"\t@{UPTIME_CHECKER_MATCHER} {{\n\t\tremote_ip {' '.join(uptime_checkers)}\n"
            f"\t\tnot {{\n\t\t\tmethod GET\n\t\t\tpath {UPTIME_CHECK_PATH}\n\t\t}}\n\t}}\n"
            f"\trespond @{UPTIME_CHECKER_MATCHER} 403\n"
        )
    return (
        f"{{\n\tadmin {CADDY_ADMIN}\n{email}}}\n\n"
        f"{hostname} {{\n{site_tls}{checkers}\treverse_proxy 127.0.0.1:5000\n}}\n"
    )


def web_certificates(*, hostname: str, tls: str) -> list[tuple[str, str]]:
    """(certificate chain, key) paths on the host where the web's certificate may be, in order."""
    if tls == "custom":
        return [(f"{CADDY_CUSTOM_CERTS}/cert.pem", f"{CADDY_CUSTOM_CERTS}/key.pem")]
    return [
        (
            f"{CADDY_STORAGE}/certificates/{issuer}/{hostname}/{hostname}.crt",
            f"{CADDY_STORAGE}/certificates/{issuer}/{hostname}/{hostname}.key",
        )
        for issuer in CADDY_ISSUERS[tls]
    ]


def provision_json(
    *,
    admin_email: str,
    admin_password: str,
    sending_domains: Mapping[str, tuple[str, str]],
    api_key: str,
    smtp_key: str,
) -> str:
    """Input of provision.rb; `sending_domains` maps domain -> (DKIM private key PEM, selector)."""
    return json.dumps(
        {
            "admin": {"email": admin_email, "first_name": "Postal", "last_name": "Admin", "password": admin_password},
            "organization": ORGANIZATION,
            "server": SERVER,
            "domains": [
                {"name": name, "dkim_private_key": pem, "dkim_selector": selector}
                for name, (pem, selector) in sending_domains.items()
            ],
            "credentials": [
                {"type": "API", "name": API_CREDENTIAL, "key": api_key},
                {"type": "SMTP", "name": SMTP_CREDENTIAL, "key": smtp_key},
                LOCAL_CREDENTIAL,
            ],
        },
        sort_keys=True,
    )


def payload(files: Mapping[str, str | None]) -> str:
    """stdin for a step: one `<name> <base64>` line per file (read by lib.sh's pg_read_payload)."""
    return "".join(
        f"{name} {base64.b64encode(text.encode()).decode()}\n"
        for name, text in sorted(files.items())
        if text is not None
    )


def withhold(values) -> str:
    """The payload file `withhold`: each secret value on its own line(s), for lib.sh's bootstrap log."""
    return "".join(f"{value.strip()}\n" for value in values if value and value.strip())


@functools.cache
def step_script(step: str) -> str:
    """What runs on the VM: lib.sh followed by the step script without its shebang."""
    body = (SCRIPTS / f"{step}.sh").read_text().split("\n", 1)[1]
    return (SCRIPTS / "lib.sh").read_text().rstrip("\n") + "\n" + body


@functools.cache
def script_text(filename: str) -> str:
    return (SCRIPTS / filename).read_text()


def command_line(step: str, env: Mapping[str, str]) -> str:
    """The remote command: `sudo env PG_STEP=<step> K=V… bash -c <script> <step>`."""
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in {"PG_STEP": step, **env}.items())
    return f"sudo env {assignments} bash -c {shlex.quote(step_script(step))} postal-gateway-{step}"


def digest(*parts: str) -> str:
    """sha256 over the parts, length-prefixed so that no two part lists collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode()
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()
