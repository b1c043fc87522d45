"""Generated docs and the newcomer's path: the roles list, the config table, and README commands
that work when copied literally (stack named, no example value left behind, runs as root)."""

import re
import subprocess
import sys

import program
import pytest
import yaml

from components import config, config_docs, host, roles
from scripts import docgen

ROOT = program.ROOT
README = ROOT / "README.md"
WORKFLOWS = [ROOT / ".github/workflows/deploy.yml", ROOT / ".github/workflows/preview.yml"]
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench/README.md", ROOT / "examples/consumer/README.md"]


def test_every_config_key_has_a_doc_entry():
    missing = set(config.KEYS) - set(config_docs.KEY_DOCS)
    assert not missing, f"add a Doc for {sorted(missing)} to components/config_docs.py KEY_DOCS"
    assert set(config_docs.KEY_DOCS) <= set(config.KEYS), "KEY_DOCS documents a key config.KEYS lacks"
    for key in config.DEFAULTS:
        assert config_docs.KEY_DOCS[key].default is None, f"{key}: its default comes from config.DEFAULTS"


def test_generated_blocks_are_current():
    assert docgen.stale() == [], "run venv/bin/python scripts/docgen.py and commit what it rewrote"


def test_docgen_check_fails_on_a_stale_block(tmp_path):
    for name in docgen.FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    assert docgen.stale(tmp_path) == []
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("`roles/compute.admin`", "`roles/owner`"))
    assert docgen.stale(tmp_path) == ["README.md"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/docgen.py"), "--check"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr  # the real tree is current


def generated(text: str, name: str) -> str:
    (match,) = [m for m in docgen.BLOCK.finditer(text) if m["name"] == name]
    return match["body"]


def test_roles_are_one_list_in_readme_ci_cd_and_workflows():
    readme, cicd = README.read_text(), (ROOT / "docs/ci-cd.md").read_text()
    deploy, preview = (w.read_text() for w in WORKFLOWS)
    for identity, workflow in (("deploy", deploy), ("preview", preview)):
        want = {r.role for r in roles.IDENTITIES[identity]}
        assert set(re.findall(r"`(roles/[\w.]+)`", generated(readme, f"roles-{identity}-list"))) == want
        assert set(re.findall(r"^\| `(roles/[\w.]+)`", generated(cicd, f"roles-{identity}"), re.M)) == want
        assert set(re.findall(r"roles/[\w.]+", generated(workflow, f"roles-{identity}"))) == want
        grants, member = generated(cicd, "roles-grant"), f"postal-{identity}@"
        assert {
            role for role, who in re.findall(r"--role (roles/[\w.]+) --member (\S+)", grants) if member in who
        } == want
    # A role named anywhere else in these files is one of the list, the VM's own or Workload Identity's.
    known = {r.role for rs in roles.IDENTITIES.values() for r in rs} | set(host.LOG_ROLES)
    known.add("roles/iam.workloadIdentityUser")
    for path in [README, ROOT / "docs/ci-cd.md", *WORKFLOWS]:
        named = set(re.findall(r"roles/[a-zA-Z.]+[a-zA-Z]", path.read_text()))
        assert named <= known, f"{path.name}: {sorted(named - known)} not in components/roles.py"


def test_every_role_is_granted_at_its_scope():
    cmds = roles.grant_commands(roles.DEPLOY, "user:ops@example.com")
    assert len(cmds) == len(roles.DEPLOY)
    for cmd, role in zip(cmds, roles.DEPLOY, strict=True):
        prefix = {
            roles.PROJECT: "gcloud projects add-iam-policy-binding <project> ",
            roles.BUCKET: "gcloud storage buckets add-iam-policy-binding gs://<state-bucket> ",
            roles.KEY: "gcloud kms keys add-iam-policy-binding postal-gateway --project <project> --location <region> ",
        }[role.scope]
        assert cmd.startswith(prefix) and f"--role {role.role} --member user:ops@example.com" in cmd
    # The key named in the grant is the one README's "Secrets key and stack" step creates.
    assert "gcloud kms keys create postal-gateway --project <project> --location <region>" in README.read_text()


def test_readme_fits_in_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def code_blocks(text: str) -> list[str]:
    return re.findall(r"^\s*```[^\n]*\n(.*?)^\s*```", text, re.S | re.M)


def test_readme_commands_run_as_root():
    """No bare `sudo` in the README's code: a root shell in a container has no sudo."""
    for block in code_blocks(README.read_text()):
        assert not re.search(r"(^|[\s;&|(])sudo\s", block), block


STACKFUL = re.compile(
    r"^pulumi (up|preview|refresh|destroy|config|import|state|cancel|stack(?! (?:init|select|ls)\b))\b"
)
BARE = re.compile(r"^pulumi (up|preview|refresh|destroy)$")


def commands(text: str) -> list[tuple[str, bool]]:
    """Commands in fenced blocks (line by line, True) and inline code spans (False)."""
    found = []
    for block in code_blocks(text):
        for line in block.splitlines():
            found += [(c.strip(), True) for c in re.split(r"&&|\$\(|;|\|", line)]
    prose = re.sub(r"^\s*```[^\n]*\n.*?^\s*```", "", text, flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        found += [(c.strip(), False) for c in re.split(r"&&|\$\(|;", span)]
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_pulumi_command_names_its_stack(doc):
    """`pulumi stack init staging` selects staging: a later command without -s would land there.
    A bare `pulumi up` in prose names the operation, not a command to copy."""
    for command, in_block in commands(doc.read_text()):
        if STACKFUL.match(command) and (in_block or not BARE.match(command)):
            assert re.search(r"(^|\s)(-s|--stack)(\s|=)", command), f"{doc.name}: {command}"


def test_readme_replaces_every_example_value_whole():
    """Each value of the example stack file is set again by the README's Configuration step as a whole
    value (a list set element by element would keep the example's other elements)."""
    stack = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    sets = {}
    for command, _ in commands(README.read_text()):
        match = re.match(r"pulumi config set -s prod (?:--path )?(\S+) (.+)", command)
        if match:
            sets[match[1].strip("'")] = match[2]
    for key, value in stack.items():
        name = key.removeprefix("postal-gateway:")
        if config.DEFAULTS.get(name, object()) == value:
            continue  # the program's default: nothing of someone else's
        assert name in sets, f"the README's Configuration step does not set {key}"
        if isinstance(value, (list, dict)):
            assert sets[name].lstrip("'\"").startswith(("[", "{", '\\"[', "[\\")), f"{key} must be set whole"
    assert "postal-gateway:dmarcPolicy" not in stack  # most Workspace domains publish DMARC already


def test_the_runbook_opens_with_mail_isnt_going_out():
    """The most common page first: numbered checks, each with a command to run and a doc to read."""
    runbook = (ROOT / "docs/runbook.md").read_text()
    first = re.search(r"^## (.+)$", runbook, re.M)[1]
    assert first == "Mail isn't going out"
    body = runbook.split("## Mail isn't going out", 1)[1].split("\n## ", 1)[0]
    checks = re.split(r"^\d+\. ", body, flags=re.M)[1:]
    assert len(checks) >= 6
    for check in checks:
        assert re.search(r"`[^`]+`", check), check  # a command or a value to look at
        assert re.search(r"\]\([\w.]*#[\w-]+\)", check), check  # and where it is explained


def test_readme_names_every_firewall_rule():
    """The README's picture names each rule the program can create (security.md has the details)."""
    run = program.shared_run({"postal-gateway:sshSourceRanges": '["203.0.113.7/32"]'})  # ssh-direct exists only then
    picture = code_blocks(README.read_text())[0]
    names = {r.name.removeprefix("postal-allow-") for r in run.of_type("gcp:compute/firewall:Firewall")}
    assert "ssh-direct" in names
    for name in names:
        assert re.search(rf"(postal-allow|\s)-?{re.escape(name)}\b", picture), name
