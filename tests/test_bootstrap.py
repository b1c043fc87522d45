"""Bootstrap steps under mocks: order, what each step receives, secrecy and what reruns them."""

import json
import shlex

import certs
import program
import pytest
from program import commands, env_of, payload_of

from components import render, tunnel

NS = "postal-gateway:"
STEPS = ("os", "database", "postal", "caddy", "provision", "preflight", "ops", "smtp-tls")
CERT, KEY = certs.pair()


def test_one_command_per_step_running_its_script(run):
    steps = commands(run)
    assert set(steps) == set(STEPS)
    for step, command in steps.items():
        words = shlex.split(command.inputs["create"])
        assert words[words.index("-c") + 1] == render.step_script(step)
        assert env_of(command)["PG_STEP"] == step


def test_steps_run_in_order(run):
    steps = commands(run)
    urn = {step: c.urn for step, c in steps.items()}
    deps = {step: set(c.depends_on) for step, c in steps.items()}
    assert urn["os"] in deps["database"] and urn["database"] in deps["postal"]
    assert urn["postal"] in deps["provision"] and urn["os"] in deps["caddy"] and urn["os"] in deps["preflight"]
    assert urn["os"] in deps["ops"]
    assert {urn["postal"], urn["caddy"]} <= deps["smtp-tls"]  # Postal's SMTP server waits for the web's certificate
    record_urns = {r.urn: r.inputs for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")}
    caddy_records = [record_urns[u] for u in deps["caddy"] if u in record_urns]
    assert [(r["name"], r["type"]) for r in caddy_records] == [("postal.rdo-dev.com", "A")]  # ACME needs it
    assert {u for u in deps["provision"] if u in record_urns} == set(record_urns)  # check_dns needs them


def test_connection_and_triggers(run):
    port = tunnel.local_port("acme-mail", "prod")
    assert run.tunnels == [("acme-mail", "europe-west1-b", run.outputs["instanceName"][0], port)]  # one, to the VM
    for command in commands(run).values():
        assert (command.inputs["connection"]["host"], command.inputs["connection"]["port"]) == ("127.0.0.1", port)
        assert command.inputs["connection"]["user"] == "postal-ops"
        assert command.inputs["connection"]["dialErrorLimit"] == 60
        assert "connection" in command.secret_inputs
        assert command.inputs["triggers"][0] == "4242424242"  # a replaced VM reruns every step
        assert len(command.inputs["triggers"][1]) == 64


def test_secrets_travel_only_in_secret_stdin(run):
    steps = commands(run)
    assert payload_of(steps["database"]).keys() == {"db_root_password", "db_password"}
    assert payload_of(steps["postal"]).keys() == {"postal_yml", "signing_key", "withhold"}
    assert payload_of(steps["provision"]).keys() == {"provision_json", "withhold"}
    for step in ("database", "postal", "provision"):
        command = steps[step]
        assert {"stdin", "triggers"} <= command.secret_inputs
        assert {"stdout", "stderr"} <= command.secret_outputs
        assert command.inputs["logging"] == "none"
    for step in ("os", "caddy", "preflight", "ops"):
        assert "stdin" not in steps[step].inputs and steps[step].inputs["logging"] == "stdoutAndStderr"
    assert "create" not in set().union(*(c.secret_inputs for c in steps.values()))


def test_step_settings(run):
    steps = commands(run)
    assert env_of(steps["os"])["PG_SELINUX"] == "enforcing"
    assert env_of(steps["os"])["PG_DATA_DEVICE"] == "/dev/disk/by-id/google-postal-data"
    postal = env_of(steps["postal"])
    assert postal["PG_POSTAL_VERSION"] == "3.3.6" and len(postal["PG_INSTALL_COMMIT"]) == 40
    assert "smtp://smtp-relay.gmail.com:587?ssl_mode=STARTLS" in payload_of(steps["postal"])["postal_yml"]
    caddy = env_of(steps["caddy"])
    # the uptime checkers the 443 rule admits (tests/program.py's answer, IPv4 only) may GET /login only
    checkers = ["34.94.157.51/32", "35.186.144.97/32", "35.187.242.246/32", "35.198.221.49/32"]
    assert caddy["PG_TLS"] == "letsencrypt" and caddy["PG_CADDYFILE"] == render.caddyfile(
        hostname="postal.rdo-dev.com", tls="letsencrypt", admin_email="ops@rdo-dev.com", uptime_checkers=checkers
    )
    (rule,) = [r for r in run.of_type("gcp:compute/firewall:Firewall") if r.name == "postal-allow-uptime-checks"]
    assert rule.inputs["sourceRanges"] == checkers
    preflight = env_of(steps["preflight"])
    assert (preflight["PG_RELAY_HOST"], preflight["PG_RELAY_PORT"], preflight["PG_HOSTNAME"]) == (
        "smtp-relay.gmail.com",
        "587",
        "postal.rdo-dev.com",
    )
    # Postal's envelope sender once return paths check OK: one per sending domain
    assert preflight["PG_SENDERS"] == (
        "rdo-dev.com=relay-preflight@psrp.rdo-dev.com rdo-studio.net=relay-preflight@psrp.rdo-studio.net"
    )


def test_provisioning_uses_the_pulumi_keys(run):
    spec = json.loads(payload_of(commands(run)["provision"])["provision_json"])
    assert [d["name"] for d in spec["domains"]] == ["rdo-dev.com", "rdo-studio.net"]
    assert all(d["dkim_private_key"].startswith("-----BEGIN RSA PRIVATE KEY-----") for d in spec["domains"])
    dkim_names = {
        r.inputs["name"]
        for r in run.of_type("cloudflare:index/dnsRecord:DnsRecord")
        if "._domainkey." in r.inputs["name"] and not r.inputs["name"].startswith("postal._")
    }
    assert dkim_names == {f"postal-{d['dkim_selector']}._domainkey.{d['name']}" for d in spec["domains"]}
    keys = {c["type"]: c["key"] for c in spec["credentials"]}
    assert keys == {"API": run.outputs["apiKey"][0], "SMTP": run.outputs["smtpPassword"][0], "SMTP-IP": "127.0.0.1"}
    assert spec["admin"]["password"] == run.outputs["adminPassword"][0]


def test_a_new_data_disk_reruns_the_os_step_only(run):
    """A restore replaces the disk (new id): the os step remounts it; the other steps keep theirs."""
    steps = commands(run)
    disk = run.named("postal-data")
    assert steps["os"].inputs["triggers"][2] == f"{disk.name}_id"
    assert all(len(c.inputs["triggers"]) == 2 for step, c in steps.items() if step != "os")
    assert env_of(steps["os"])["PG_DATA_DISK_GB"] == "50"


@pytest.mark.parametrize(
    "tls, issuers",
    [("letsencrypt", ["acme-v02.api.letsencrypt.org-directory", "acme.zerossl.com-v2-dv90"]), ("internal", ["local"])],
)
def test_smtp_tls_watches_caddys_certificate_of_the_mode(tls, issuers):
    run = program.shared_run({NS + "tls": tls})
    env = env_of(commands(run)["smtp-tls"])
    store = "/opt/postal/caddy-data/caddy/certificates"  # Caddy's /data volume (caddy.sh), storage caddy/
    host = "postal.rdo-dev.com"
    assert env["PG_WEB_CERTS"].split() == [f"{store}/{i}/{host}/{host}.crt" for i in issuers]
    assert env["PG_WEB_KEYS"].split() == [f"{store}/{i}/{host}/{host}.key" for i in issuers]
    assert env["PG_SMTP_TLS_HOOK"] == render.step_script("smtp-tls-hook")


def test_relay_status_output_comes_from_the_preflight(run):
    assert run.outputs["relayStatus"] == ("not-allowlisted", False)
    assert run.outputs["relayStatusByDomain"] == (
        {"rdo-dev.com": "allowlisted", "rdo-studio.net": "not-allowlisted"},
        False,
    )
    assert run.outputs["smtpUsername"] == ("postal-gateway/gateway", False)  # <org>/<server> for CRAM-MD5


def changed(before, after):
    """Resources whose inputs differ between two runs, by name."""
    old = {r.name: (r.inputs, r.type) for r in before.resources}
    return {r.name for r in after.resources if old.get(r.name, (None,))[0] != r.inputs}


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ({}, set()),
        (
            {NS + "tls": "internal"},
            {"postal-caddy", "postal-smtp-tls", "postal-uptime-https"},
        ),  # the check stops validating TLS
        ({NS + "postalVersion": "3.3.5"}, {"postal-postal"}),
        ({NS + "relayHost": "relay.example.net"}, {"postal-postal", "postal-preflight"}),
        ({NS + "relayPort": "465", NS + "relayTls": "tls"}, {"postal-postal", "postal-preflight"}),
        ({NS + "selinux": "permissive"}, {"postal-os"}),
        ({NS + "dataDiskSizeGb": "80"}, {"postal-data", "postal-os"}),  # the disk grows, os runs xfs_growfs
        ({NS + "sshSourceRanges": '["198.51.100.7/32"]'}, {"postal-allow-ssh-direct", "postal-allow-https"}),  # 443 too
        ({NS + "webSourceRanges": '["192.0.2.0/24"]'}, {"postal-allow-https"}),
        (
            {NS + "adminEmail": "platform@rdo-dev.com"},
            {"postal-caddy", "postal-provision", "postal-preflight", "postal-alert-email"},
        ),  # alertEmail defaults to it
        ({NS + "mariadbImage": "mariadb:11.8"}, {"postal-database"}),
        ({NS + "caddyImage": "caddy:2.11"}, {"postal-caddy"}),
        ({NS + "maintenanceWindow": "Sat 01:00"}, {"postal-ops"}),
        ({NS + "backupRetentionDays": "7"}, {"postal-ops", "postal-backups"}),  # and the bucket's lifecycle
    ],
)
def test_each_setting_reruns_only_the_steps_that_depend_on_it(run, overrides, expected):
    assert changed(run, program.shared_run(overrides)) == expected  # {}: a second run, not the fixture's


def test_custom_tls_sends_the_pair_to_caddy_only():
    keys = (NS + "tlsCertificate", NS + "tlsPrivateKey")
    run = program.shared_run({NS + "tls": "custom", keys[0]: CERT, keys[1]: KEY}, secret_keys=keys)
    assert run.error is None, run.error
    caddy = commands(run)["caddy"]
    assert payload_of(caddy) == {"tls_certificate": CERT, "tls_private_key": KEY}
    assert "stdin" in caddy.secret_inputs and caddy.inputs["logging"] == "none"
    assert "/certs/cert.pem" in env_of(caddy)["PG_CADDYFILE"]
    assert KEY not in caddy.inputs["create"]
