"""The documentation stays in step with the code: keys, outputs, links, URNs, steps, commands.

Also the first config error a newcomer sees is ours: the Pulumi CLI validates keys declared in
Pulumi.yaml before the program runs (pulumi/pulumi pkg/workspace/config.go: a declared key
without a default is "missing configuration value", an explicitly typed one "must be of type
'array<string>'"), so Pulumi.yaml declares neither.
"""

import re
import shlex
from pathlib import Path

import program
import pytest
import yaml

from components import config

ROOT = program.ROOT
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "bench" / "README.md",
    ROOT / "examples" / "consumer" / "README.md",
]
NS = "postal-gateway:"


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def section(doc: str, heading: str) -> str:
    """The body of the `## heading…` section, up to the next heading of level 1–2."""
    match = re.search(rf"^## {re.escape(heading)}[^\n]*\n(.*?)(?=^#{{1,2}} |\Z)", doc, re.S | re.M)
    assert match, f"no section {heading!r}"
    return match.group(1)


def table_keys(body: str, column: int = 0) -> set[str]:
    """Backticked names in one column of every markdown table row of `body`."""
    names = set()
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) > column and not set(cells[column]) <= set("-: "):
            names |= set(re.findall(r"`([A-Za-z][\w-]*)`", cells[column]))
    return names


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_configuration_table_is_the_config_contract():
    # generated from components/config_docs.py (tests/test_docgen.py keeps it current)
    documented = table_keys(text(ROOT / "docs" / "configuration.md"))
    assert documented == set(config.KEYS)


def test_readme_outputs_table_is_what_the_program_exports(run):
    documented = table_keys(section(text(ROOT / "README.md"), "Outputs"))
    assert documented == set(run.outputs)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", text(doc)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: {target} does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", text(dest), re.M)
            assert anchor in {slug(h) for h in headings}, f"{doc.name}: no heading #{anchor} in {dest.name}"


def test_readme_links_every_document():
    readme = text(ROOT / "README.md")
    for doc in DOCS[1:]:
        assert f"]({doc.relative_to(ROOT)})" in readme, f"README does not link {doc.relative_to(ROOT)}"


def test_documented_urns_and_resource_names_are_registered(run):
    urns = {r.urn for r in run.resources}
    names = {r.name for r in run.resources}
    for doc in DOCS:
        body = text(doc)
        for urn in re.findall(r"urn:pulumi:prod::postal-gateway::[^'`\s]+", body):
            assert urn in urns, f"{doc.name}: {urn} is not a resource of the program"
        for name in re.findall(r"<urn of ([\w-]+)>", body):
            assert name in names, f"{doc.name}: no resource named {name}"


def test_documented_python_modules_and_scripts_exist():
    for doc in DOCS:
        body = text(doc)
        for module in re.findall(r"python -m (scripts(?:\.\w+)+)", body):
            assert (ROOT / (module.replace(".", "/") + ".py")).exists(), f"{doc.name}: {module}"
        for script in re.findall(r"python (\S+\.py)", body):
            base = ROOT / "examples" / "consumer" if doc.parent.name == "consumer" else ROOT
            assert (base / script).exists(), f"{doc.name}: {script}"


def test_documented_containers_are_the_ones_the_scripts_start():
    scripts = "".join(text(p) for p in (ROOT / "scripts" / "remote").glob("*.sh"))
    started = set(re.findall(r"^name=([\w-]+)$", scripts, re.M))
    for doc in DOCS:
        for name in re.findall(r"docker (?:logs|exec|restart|inspect)(?: -\S+)* (postal-[a-z]+)\b", text(doc)):
            # postal-web/-smtp/-worker-1 are compose's names for Postal's own services
            assert name in started or re.match(r"postal-(web|smtp|worker)", name), f"{doc.name}: {name}"


def step_inputs(command) -> tuple[set, set]:
    """The `PG_*` settings in a step's command line and the file names in its stdin payload."""
    tokens = shlex.split(command.inputs["create"])
    settings = {t.split("=", 1)[0] for t in tokens[tokens.index("env") + 1 : tokens.index("bash")]} - {"PG_STEP"}
    files = {line.split()[0] for line in (command.inputs.get("stdin") or "").splitlines() if line.strip()}
    return settings, files


def test_step_tables_list_every_step_and_all_its_inputs(run):
    """docs/operations.md says what reruns each step: its settings and stdin files, exactly."""
    body = section(text(ROOT / "docs" / "operations.md"), "Bootstrap steps")
    documented = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) == 3:
            settings, _, files = cells[2].partition("·")
            documented[cells[0].strip("`")] = (
                set(re.findall(r"`(PG_\w+)`", settings)),
                set(re.findall(r"`(\w+)`", files)),
            )
    commands = {r.name.removeprefix("postal-"): r for r in run.of_type("command:remote:Command")}
    assert set(documented) == set(commands)
    assert set(commands) <= table_keys(body)  # and each has a "does" row
    for step, command in commands.items():
        settings, files = step_inputs(command)
        assert documented[step][0] == settings, f"{step}: document exactly these settings: {sorted(settings)}"
        assert files <= documented[step][1], f"{step}: document its stdin files {sorted(files)}"


def test_key_change_tables_name_real_keys_and_resources(run):
    body = section(text(ROOT / "docs" / "operations.md"), "What a key change does")
    names = table_keys(body)
    keys, resources = {n for n in names if "-" not in n}, {n for n in names if "-" in n}
    assert keys and keys <= set(config.KEYS)
    assert resources <= {r.name for r in run.resources}


def test_pulumi_yaml_declares_nothing_the_cli_would_reject_first():
    declared = yaml.safe_load(text(ROOT / "Pulumi.yaml"))["config"]
    for key, spec in declared.items():
        assert "default" in spec, f"{key}: the CLI would report it missing before our message"
        assert not {"type", "items", "secret"} & set(spec), f"{key}: the CLI would type-check it first"
        assert spec["default"] == config.DEFAULTS[key]


def load(values: dict):
    import pulumi

    pulumi.runtime.set_mocks(program.Mocks(), project=program.PROJECT, stack=program.STACK)
    pulumi.runtime.set_all_config({k: v for k, v in {**program.BASE_CONFIG, **values}.items() if v is not None})
    return config.load()


def test_a_list_set_as_one_json_string_is_accepted():
    # `pulumi config set sshSourceRanges '["203.0.113.7/32"]'` stores a string; the engine hands the
    # program that string, exactly as it hands it an object value serialised to JSON.
    cfg = load({NS + "sshSourceRanges": '["203.0.113.7/32", "192.0.2.1"]'})
    assert cfg.ssh_source_ranges == ("203.0.113.7/32", "192.0.2.1/32")


@pytest.mark.parametrize(
    "values,expected",
    [
        (
            {NS + "sshSourceRanges": "203.0.113.7/32"},
            "postal-gateway:sshSourceRanges: '203.0.113.7/32' is not valid (not a list)",
        ),
        ({NS + "hostname": None}, "postal-gateway:hostname: is required"),
        ({NS + "sshSourceRange": '["203.0.113.7/32"]'}, "did you mean sshSourceRanges?"),
        ({NS + "bootDiskSizeGb": "big"}, "postal-gateway:bootDiskSizeGb: 'big' is not valid"),
    ],
)
def test_first_errors_name_the_key_and_the_fix(values, expected):
    with pytest.raises(config.ConfigError) as err:
        load(values)
    line = next(line for line in str(err.value).splitlines() if expected in line)
    assert "Fix: " in line
    if "sshSourceRanges: '" in expected:
        assert "pulumi config set --path 'sshSourceRanges[0]'" in line


def test_security_doc_lists_every_firewall_rule_with_its_ports():
    """docs/security.md's rule table is exactly the rules the program registers (every optional rule
    switched on), each with its ports."""
    full = program.run({NS + "sshSourceRanges": '["10.8.0.0/16"]'})
    assert full.error is None, full.error
    registered = {r.name: r.inputs["allows"][0]["ports"] for r in full.of_type("gcp:compute/firewall:Firewall")}
    documented = {}
    for line in section(text(ROOT / "docs" / "security.md"), "Firewall rules").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `"):
            documented[cells[0].strip("`")] = re.findall(r"^\d+|(?<=, )\d+", cells[1])
    assert documented == registered


def test_security_doc_names_the_vms_roles_and_the_deployers_tunnel_role():
    from components.backup import WRITER_ROLE
    from components.host import LOG_ROLES

    identities = section(text(ROOT / "docs" / "security.md"), "Identities")
    vm = next(line for line in identities.splitlines() if "service account `postal-gw-" in line)
    assert set(re.findall(r"`(roles/[\w.]+)`", vm)) == {*LOG_ROLES, WRITER_ROLE}  # the last on the backup bucket
    assert "roles/iap.tunnelResourceAccessor" in identities
    assert "`roles/iap.tunnelResourceAccessor`" in section(text(ROOT / "README.md"), "Prerequisites")


def test_no_document_sends_deploys_to_a_self_hosted_runner_or_ssh_around_iap():
    for doc in [*DOCS, ROOT / ".github" / "workflows" / "deploy.yml"]:
        body = text(doc)
        assert "self-hosted" not in body and "DEPLOY_RUNS_ON" not in body, doc.name
        for command in re.findall(r"^(?:\$ )?(ssh [^\n]*)$", body, re.M):
            pytest.fail(f"{doc.name}: plain `{command}`; use gcloud compute ssh --tunnel-through-iap")
    assert "gcloud compute ssh postal-ops@$(pulumi stack output -s prod instanceName) --tunnel-through-iap" in text(
        ROOT / "docs" / "runbook.md"
    )


def test_workload_identity_setup_names_the_repository_by_numeric_ids():
    setup = section(text(ROOT / "docs" / "ci-cd.md"), "Workload Identity setup")
    conditions = re.findall(r'--attribute-condition "([^"]+)"', setup)
    assert len(conditions) == 2
    for condition in conditions:
        assert "assertion.repository_id == '<repo-id>'" in condition
        assert "assertion.repository_owner_id == '<owner-id>'" in condition
    assert "assertion.repository ==" not in setup and "attribute.repository/" not in setup
    assert "attribute.repository_id/<repo-id>" in setup
