"""Rendered files checked by the real tools: caddy validate, Postal's config schema and relay parsing."""

import base64
import http.server
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import program
import pytest
import yaml
from certs import openssl_self_signed

from components import render

HOST = "postal.rdo-dev.com"

# Postal 3.3.6 lib/postal/config_schema.rb: group -> key -> type ("array" for `array` strings).
POSTAL_SCHEMA = {
    "postal": {
        "web_hostname": str,
        "web_protocol": str,
        "smtp_hostname": str,
        "use_ip_pools": bool,
        "default_maximum_delivery_attempts": int,
        "default_maximum_hold_expiry_days": int,
        "default_suppression_list_automatic_removal_days": int,
        "default_spam_threshold": int,
        "default_spam_failure_threshold": int,
        "use_local_ns_for_domain_verification": bool,
        "use_resent_sender_header": bool,
        "signing_key_path": str,
        "smtp_relays": list,
        "trusted_proxies": list,
        "queued_message_lock_stale_days": int,
        "batch_queued_messages": bool,
    },
    "web_server": {"default_port": int, "default_bind_address": str, "max_threads": int},
    "worker": {"default_health_server_port": int, "default_health_server_bind_address": str, "threads": int},
    "main_db": {
        "host": str,
        "port": int,
        "username": str,
        "password": str,
        "database": str,
        "pool_size": int,
        "encoding": str,
    },
    "message_db": {
        "host": str,
        "port": int,
        "username": str,
        "password": str,
        "encoding": str,
        "database_name_prefix": str,
    },
    "logging": {"rails_log_enabled": bool, "sentry_dsn": str, "enabled": bool, "highlighting_enabled": bool},
    "smtp_server": {
        "default_port": int,
        "default_bind_address": str,
        "default_health_server_port": int,
        "default_health_server_bind_address": str,
        "tls_enabled": bool,
        "tls_certificate_path": str,
        "tls_private_key_path": str,
        "tls_ciphers": str,
        "ssl_version": str,
        "proxy_protocol": bool,
        "log_connections": bool,
        "max_message_size": int,
        "log_ip_address_exclusion_matcher": str,
    },
    "dns": {
        "mx_records": list,
        "spf_include": str,
        "return_path_domain": str,
        "route_domain": str,
        "track_domain": str,
        "helo_hostname": str,
        "dkim_identifier": str,
        "domain_verify_prefix": str,
        "custom_return_path_prefix": str,
        "timeout": int,
        "resolv_conf_path": str,
    },
    "smtp": {
        "host": str,
        "port": int,
        "username": str,
        "password": str,
        "authentication_type": str,
        "enable_starttls": bool,
        "enable_starttls_auto": bool,
        "openssl_verify_mode": str,
        "from_name": str,
        "from_address": str,
    },
    "rails": {"environment": str, "secret_key": str},
}
SSL_MODES = {"Auto", "STARTLS", "TLS", "None"}  # app/lib/smtp_client/ssl_modes.rb


def postal_relay(value: str) -> dict:
    """The transform in config_schema.rb: URI.parse, port default 25, ssl_mode default Auto."""
    uri = urlsplit(value)
    query = parse_qs(uri.query)
    return {"host": uri.hostname, "port": uri.port or 25, "ssl_mode": query.get("ssl_mode", ["Auto"])[0]}


def rendered_yml(relay="smtp://smtp-relay.gmail.com:587?ssl_mode=STARTLS"):
    return yaml.safe_load(
        render.postal_yml(
            hostname=HOST,
            relay_url=relay,
            db_password="db'pw: #x",
            rails_secret_key="k" * 64,
            from_address="postal@rdo-dev.com",
        )
    )


def test_postal_yml_matches_postals_v2_schema():
    config = rendered_yml()
    assert config.pop("version") == 2
    for group, values in config.items():
        assert group in POSTAL_SCHEMA, group
        for key, value in values.items():
            assert key in POSTAL_SCHEMA[group], f"{group}.{key}"
            assert isinstance(value, POSTAL_SCHEMA[group][key]), f"{group}.{key}"


def test_postal_yml_sets_what_the_google_relay_needs():
    config = rendered_yml()
    assert config["dns"]["helo_hostname"] == HOST
    assert config["dns"]["return_path_domain"] == f"rp.{HOST}"
    assert config["dns"]["spf_include"] == f"spf.{HOST}"
    assert config["postal"]["web_hostname"] == config["postal"]["smtp_hostname"] == HOST
    assert config["main_db"]["password"] == config["message_db"]["password"] == "db'pw: #x"  # quoted safely
    assert config["postal"]["signing_key_path"] == "/config/signing.key"
    (relay,) = config["postal"]["smtp_relays"]
    assert postal_relay(relay) == {"host": "smtp-relay.gmail.com", "port": 587, "ssl_mode": "STARTLS"}


@pytest.mark.parametrize("mode,expected", [("starttls", "STARTLS"), ("tls", "TLS"), ("none", "None")])
def test_every_relay_tls_mode_parses_to_a_postal_ssl_mode(mode, expected):
    from components.config import RELAY_TLS_MODES

    url = f"smtp://relay.example.com:2525?ssl_mode={RELAY_TLS_MODES[mode]}"
    parsed = postal_relay(url)
    assert parsed["ssl_mode"] == expected and parsed["ssl_mode"] in SSL_MODES and parsed["port"] == 2525


def test_misspelled_starttls_would_not_be_a_postal_mode():
    # What the seed guide suggests silently means plain text in Postal.
    assert postal_relay("smtp://smtp-relay.gmail.com:587?ssl_mode=STARTTLS")["ssl_mode"] not in SSL_MODES


def caddy_validate(text: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "Caddyfile"
    path.write_text(text)
    return subprocess.run(
        [program.tool("caddy"), "validate", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    path = tmp_path_factory.mktemp("certs")
    openssl_self_signed(path / "cert.pem", path / "key.pem", HOST, days=2, san=False)
    return path


@pytest.mark.parametrize("tls", ["letsencrypt", "internal", "custom"])
def test_caddyfile_validates_for_every_tls_mode(tls, tmp_path, certs):
    text = render.caddyfile(
        hostname=HOST, tls=tls, admin_email="ops@rdo-dev.com", cert_dir=str(certs), uptime_checkers=CHECKERS
    )
    result = caddy_validate(text, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "reverse_proxy 127.0.0.1:5000" in text
    assert ("ops@rdo-dev.com" in text) == (tls == "letsencrypt")
    # Caddy's admin API on a unix socket inside the container, not on TCP 2019 of the host network
    adapted = subprocess.run(
        [program.tool("caddy"), "adapt", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(adapted.stdout)["admin"] == {"listen": render.CADDY_ADMIN}
    assert render.CADDY_ADMIN == "unix//run/caddy-admin.sock"
    if tls == "internal":
        # leaves signed by the internal root for 90 days (not 12 hours under a 7-day intermediate):
        # the SMTP certificate, and Postal's smtp restart, changes about every 60 days
        (policy,) = json.loads(adapted.stdout)["apps"]["tls"]["automation"]["policies"]
        assert policy["issuers"] == [{"module": "internal", "lifetime": 90 * 86400 * 10**9, "sign_with_root": True}]


CHECKERS = ["34.94.157.51/32", "35.186.144.97/32"]


class _Postal(http.server.BaseHTTPRequestHandler):
    """Stands in for Postal's web server behind Caddy: 200 to any method on any path."""

    def _answer(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"Welcome to Postal")

    do_GET = do_POST = do_HEAD = do_PUT = _answer

    def log_message(self, *args):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("local_is_checker", [True, False])
def test_caddy_lets_uptime_checkers_only_get_the_login_page(tmp_path, local_is_checker):
    """The real Caddy runs the rendered site block (served on 127.0.0.1 over plain HTTP, its upstream a
    stand-in Postal): from a checker's address only GET /login reaches Postal, anything else gets 403;
    other clients are not affected."""
    backend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Postal)
    # a short poll: shutdown() waits for serve_forever to look again (0.5 s by default)
    threading.Thread(target=backend.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    port = _free_port()
    checkers = ["127.0.0.1/32", *CHECKERS] if local_is_checker else CHECKERS
    text = render.caddyfile(hostname=HOST, tls="letsencrypt", admin_email="ops@rdo-dev.com", uptime_checkers=checkers)
    text = (
        text.replace(f"admin {render.CADDY_ADMIN}", "admin off")
        .replace(f"{HOST} {{", f"http://{HOST}:{port} {{\n\tbind 127.0.0.1")
        .replace("127.0.0.1:5000", f"127.0.0.1:{backend.server_address[1]}")
    )
    (tmp_path / "Caddyfile").write_text(text)
    caddy = subprocess.Popen(
        [program.tool("caddy"), "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")},
    )

    def status(method: str, path: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers={"Host": HOST})
        request.data = b"x" if method in ("POST", "PUT") else None
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert caddy.poll() is None, caddy.stderr.read().decode()
                time.sleep(0.1)
        found = {
            (method, path): status(method, path)
            for method, path in [
                ("GET", "/login"),
                ("GET", "/login?return_to=%2F"),
                ("HEAD", "/login"),
                ("POST", "/login"),
                ("GET", "/api/v1/send/message"),
                ("POST", "/api/v1/send/message"),
                ("PUT", "/login"),
            ]
        }
    finally:
        caddy.terminate()
        caddy.wait(timeout=10)
        backend.shutdown()
    if local_is_checker:
        assert found == {
            ("GET", "/login"): 200,
            ("GET", "/login?return_to=%2F"): 200,
            ("HEAD", "/login"): 403,
            ("POST", "/login"): 403,
            ("GET", "/api/v1/send/message"): 403,
            ("POST", "/api/v1/send/message"): 403,
            ("PUT", "/login"): 403,
        }
    else:
        assert set(found.values()) == {200}


def test_caddy_validate_rejects_a_broken_custom_pair(tmp_path):
    text = render.caddyfile(hostname=HOST, tls="custom", admin_email="ops@rdo-dev.com", cert_dir=str(tmp_path))
    assert caddy_validate(text, tmp_path).returncode != 0


def test_dkim_txt_is_postals_record_format():
    pem = "-----BEGIN PUBLIC KEY-----\nMIIBIjAN\nBgkqhkiG\n-----END PUBLIC KEY-----\n"
    assert render.dkim_txt(pem) == "v=DKIM1; t=s; h=sha256; p=MIIBIjANBgkqhkiG;"


def test_payload_round_trips_and_skips_missing_files():
    text = render.payload({"b": "two\nlines\n", "a": "ünï", "c": None})
    lines = text.splitlines()
    assert [line.split()[0] for line in lines] == ["a", "b"]
    assert [base64.b64decode(line.split()[1]).decode() for line in lines] == ["ünï", "two\nlines\n"]


def test_command_line_quotes_settings_and_keeps_secrets_out():
    line = render.command_line("caddy", {"PG_CADDYFILE": "a b\n'c'", "PG_TLS": "internal"})
    assert line.startswith("sudo env PG_STEP=caddy ") and line.endswith(" postal-gateway-caddy")
    import shlex

    words = shlex.split(line)
    assert "PG_CADDYFILE=a b\n'c'" in words and words[words.index("-c") - 1] == "bash"
    assert words[words.index("-c") + 1] == render.step_script("caddy")


def test_digest_separates_parts():
    assert render.digest("ab", "c") != render.digest("a", "bc")
    assert render.digest("x") == render.digest("x")


def test_postal_yml_turns_on_smtp_tls_with_the_files_the_smtp_tls_step_installs():
    smtp = rendered_yml()["smtp_server"]
    assert smtp["tls_enabled"] is True  # Postal then advertises STARTTLS (app/lib/smtp_server/client.rb)
    assert (smtp["tls_certificate_path"], smtp["tls_private_key_path"]) == (
        "/config/smtp-tls/cert.pem",
        "/config/smtp-tls/key.pem",
    )  # config/smtp-tls on the data disk
