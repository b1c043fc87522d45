"""GitHub Actions workflows: schema-valid (check-jsonschema's vendored schema, offline) and wired as documented."""

import os
import re
import subprocess
import sys
from pathlib import Path

import program
import pytest
import yaml

WORKFLOWS = program.ROOT / ".github" / "workflows"
PREVIEW, DEPLOY = WORKFLOWS / "preview.yml", WORKFLOWS / "deploy.yml"
E2E, DRIFT = WORKFLOWS / "e2e.yml", WORKFLOWS / "drift.yml"
ALL = (PREVIEW, DEPLOY, E2E, DRIFT)
# base/: the base branch's policy pack, checked out by the preview job
REQUIREMENTS = {"requirements.txt", "requirements-dev.txt", "policy/requirements.txt", "base/policy/requirements.txt"}


def check_jsonschema(*paths):
    return program.check_jsonschema("--builtin-schema", "vendor.github-workflows", *map(str, paths))


def load(path):
    doc = yaml.safe_load(path.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def steps(doc):
    return [(name, step) for name, job in doc["jobs"].items() for step in job.get("steps", [])]


def pulumi_step(doc):
    ((job, step),) = [(j, s) for j, s in steps(doc) if s.get("uses", "").startswith("pulumi/actions@")]
    return doc["jobs"][job], step


# Each action at its current major, which runs on node24 (its action.yml `runs.using` at that tag),
# pinned to the tag's commit. Read from the repositories themselves (tags and action.yml) on 2026-11-27.
PINS = {
    "actions/checkout": ("3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"),
    "actions/setup-python": ("5fda3b95a4ea91299a34e894583c3862153e4b97", "v7.0.0"),
    "google-github-actions/auth": ("7c6bc770dae815cd3e89ee6cdf493a5fab2cc093", "v3.0.0"),
    "google-github-actions/setup-gcloud": ("aa5489c8933f4cc7a4f7d45035b3b1440c9c10db", "v3.0.1"),
    "pulumi/actions": ("8e5e406f4007fca908480587cb9893c07090f58d", "v7.0.0"),
}
USES = re.compile(r"^\s*-?\s*uses:\s*(?P<action>[\w.-]+/[\w.-]+)@(?P<ref>\S+)(?:\s+#\s*(?P<version>\S+))?\s*$", re.M)
# Only deploy.yml may name these: the deploy identity and the DNS-edit token.
DEPLOY_ONLY = {"vars.GCP_WORKLOAD_IDENTITY_PROVIDER", "vars.GCP_SERVICE_ACCOUNT", "secrets.CLOUDFLARE_API_TOKEN"}


def actionlint(*paths):
    env = {**os.environ, "PATH": f"{Path(program.tool('shellcheck')).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        [program.tool("actionlint"), "-no-color", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def references(doc) -> set[str]:
    """Every `vars.X` / `secrets.X` a workflow (or one job of it) reads."""
    return set(re.findall(r"\$\{\{[^}]*?\b((?:vars|secrets)\.[A-Z][A-Z0-9_]*)", yaml.safe_dump(doc, width=1000)))


def test_workflows_match_the_github_schema():
    assert set(WORKFLOWS.glob("*.yml")) == set(ALL)
    result = check_jsonschema(*ALL)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "old, new, error",
    [
        ("  pull_request:\n", "  pull_requestt:\n", "pull_requestt"),
        ("runs-on: ubuntu-latest", "runs-on: 5", "runs-on"),
    ],
)
def test_a_broken_workflow_is_rejected(tmp_path, old, new, error):
    broken = tmp_path / "broken.yml"
    broken.write_text(PREVIEW.read_text().replace(old, new, 1))
    result = check_jsonschema(broken)
    assert result.returncode == 1 and error in result.stdout, result.stdout + result.stderr


def test_workflows_pass_actionlint():
    result = actionlint(*ALL)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_flags_an_action_on_node20(tmp_path):
    old = tmp_path / "old.yml"
    old.write_text(
        PREVIEW.read_text().replace(f"actions/checkout@{PINS['actions/checkout'][0]}", "actions/checkout@v4", 1)
    )
    result = actionlint(old)
    assert result.returncode == 1 and 'runtime "node20" is deprecated' in result.stdout, result.stdout


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_every_action_is_pinned_to_the_commit_of_its_node24_release(path):
    uses = list(USES.finditer(path.read_text()))
    assert len(uses) == len([s for _, s in steps(load(path)) if "uses" in s])  # every `uses:` line parsed
    for use in uses:
        sha, version = PINS[use["action"]]
        assert (use["ref"], use["version"]) == (sha, version), use.group(0)


def test_preview_previews_every_stack_with_its_own_read_only_identity():
    doc = load(PREVIEW)
    assert list(doc["on"]) == ["pull_request"] and doc["on"]["pull_request"]["branches"] == ["main"]
    job, step = pulumi_step(doc)
    assert job["strategy"]["matrix"]["stack"] == ["prod", "staging"] and job["strategy"]["fail-fast"] is False
    assert step["with"]["command"] == "preview" and step["with"]["stack-name"] == "${{ matrix.stack }}"
    assert step["with"]["comment-on-pr"] is True and job["permissions"]["pull-requests"] == "write"
    assert job["environment"] == "preview" and "test" in job["needs"]
    auth = next(s for s in job["steps"] if s.get("uses", "").startswith("google-github-actions/auth@"))
    assert auth["with"] == {
        "workload_identity_provider": "${{ vars.GCP_PREVIEW_WORKLOAD_IDENTITY_PROVIDER }}",
        "service_account": "${{ vars.GCP_PREVIEW_SERVICE_ACCOUNT }}",
    }
    assert step["env"]["CLOUDFLARE_API_TOKEN"] == "${{ secrets.CLOUDFLARE_API_TOKEN_READONLY }}"


def test_the_preview_job_cannot_reach_the_deploy_identity_or_deploy_secrets():
    preview, deploy = load(PREVIEW), load(DEPLOY)
    assert references(deploy["jobs"]["deploy"]) >= DEPLOY_ONLY
    assert references(preview) & DEPLOY_ONLY == set()
    # Secrets live in environments: a job outside `production` (or off main) cannot read the deploy ones,
    # whatever a pull request writes into preview.yml; and the deploy identity's Workload Identity
    # provider admits only main in `production` (docs/ci-cd.md).
    for name, job in preview["jobs"].items():
        # GITHUB_TOKEN is every job's own, scoped by its `permissions`
        secrets = {r for r in references(job) if r.startswith("secrets.")} - {"secrets.GITHUB_TOKEN"}
        assert not secrets or job["environment"] == "preview", name
        assert job.get("environment") != "production"
    deploy_job = deploy["jobs"]["deploy"]
    assert deploy_job["environment"] == "production" and deploy_job["if"] == "github.ref == 'refs/heads/main'"
    assert {r for r in references(deploy["jobs"]["test"])} == set()  # the test job gets nothing
    header = DEPLOY.read_text().split("\nname:", 1)[0]
    assert "assertion.ref == 'refs/heads/main'" in header and "assertion.environment == 'production'" in header
    assert "assertion.repository_id ==" in header and "assertion.repository_owner_id ==" in header


@pytest.mark.parametrize("workflow, pack", [(PREVIEW, "base/policy"), (DEPLOY, "policy")])
def test_preview_and_up_run_the_policy_pack_in_the_venv_its_yaml_names(workflow, pack):
    _, step = pulumi_step(load(workflow))
    assert step["with"]["policyPacks"].split() == [pack]
    install = next(s for _, s in steps(load(workflow)) if f" -r {pack}/requirements.txt" in s.get("run", ""))
    venv = yaml.safe_load((program.ROOT / "policy" / "PulumiPolicy.yaml").read_text())["runtime"]["options"]
    assert f"-m venv {pack}/{venv['virtualenv']} " in install["run"]


def test_the_preview_uses_the_base_branchs_policy_pack():
    """The pull request's own policy/ never judges it: the pack is checked out from the base commit."""
    job, step = pulumi_step(load(PREVIEW))
    pack = step["with"]["policyPacks"]
    checkouts = [s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout@")]
    (base,) = [c for c in checkouts if c.get("with", {}).get("path")]
    assert base["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert pack == f"{base['with']['path']}/policy" and base["with"]["sparse-checkout"] == "policy"
    assert base["with"]["persist-credentials"] is False
    assert job["steps"].index(base) < job["steps"].index(step)
    # after the pull request's own `pip install -r requirements.txt`, which runs the branch's build code
    own_install = next(s for s in job["steps"] if "-r requirements.txt" in s.get("run", ""))
    assert job["steps"].index(own_install) < job["steps"].index(base)
    # the program itself is the pull request's (the default checkout, at the workspace root)
    (own,) = [c for c in checkouts if not c.get("with", {}).get("path")]
    assert "ref" not in own["with"] and step["with"]["work-dir"] == "./"


def test_the_preview_waits_for_the_reviewers_check_on_the_base_branchs_script():
    doc = load(PREVIEW)
    job = doc["jobs"]["reviewers"]
    assert "reviewers" in doc["jobs"]["preview"]["needs"] and "environment" not in job
    assert job["permissions"] == {"actions": "read"}  # GET /repos/{owner}/{repo}/environments/{name}
    checkout, check = job["steps"]
    assert checkout["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    assert check["run"] == "python3 .ci/check-environment preview"
    assert check["env"] == {"GITHUB_TOKEN": "${{ secrets.GITHUB_TOKEN }}"}


@pytest.mark.parametrize("path", [PREVIEW, DEPLOY], ids=lambda p: p.name)
def test_the_pulumi_cli_is_pinned_to_the_sdk_version(path):
    _, step = pulumi_step(load(path))
    sdk = re.search(r"^pulumi==(\S+)$", (program.ROOT / "requirements.txt").read_text(), re.M)[1]
    assert str(step["with"]["pulumi-version"]) == sdk


def test_deploy_runs_up_on_main_one_at_a_time_behind_the_production_environment():
    doc = load(DEPLOY)
    assert doc["on"]["push"]["branches"] == ["main"] and "workflow_dispatch" in doc["on"]
    assert doc["concurrency"]["group"] and doc["concurrency"]["cancel-in-progress"] is False
    job, step = pulumi_step(doc)
    assert step["with"]["command"] == "up" and step["with"]["stack-name"] == "prod"
    assert job["environment"] == "production" and "test" in job["needs"]
    assert job["if"] == "github.ref == 'refs/heads/main'"  # a dispatch from another branch deploys nothing
    assert job["runs-on"] == "ubuntu-latest"  # GitHub-hosted: SSH goes through IAP, no runner is trusted
    gcloud = next(s for s in job["steps"] if s.get("uses", "").startswith("google-github-actions/setup-gcloud@"))
    assert job["steps"].index(gcloud) < job["steps"].index(step)  # the program opens the tunnel with it
    auth = next(s for s in job["steps"] if s.get("uses", "").startswith("google-github-actions/auth@"))
    assert auth["with"] == {
        "workload_identity_provider": "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
        "service_account": "${{ vars.GCP_SERVICE_ACCOUNT }}",
    }
    runs = [s for s in job["steps"] if "run" in s]
    after = runs[runs.index(next(s for s in runs if "pulumi stack output" in s["run"])) :]
    assert "--json" in after[0]["run"] and "--show-secrets" not in after[0]["run"]
    smoke = after[1]
    assert smoke["if"] == "vars.SMOKE_TEST_RECIPIENT != '' || vars.SMOKE_TEST_INBOX != ''"
    assert smoke["continue-on-error"] is False
    assert "-m scripts.smoke_test" in smoke["run"] and "--stack prod" in smoke["run"]
    assert smoke["env"]["SMOKE_TEST_SMTP"] == "${{ vars.SMOKE_TEST_SMTP }}"
    assert smoke["env"]["SMOKE_TEST_RECIPIENT"] == "${{ vars.SMOKE_TEST_RECIPIENT }}"
    # with an inbox configured, the messages are read back (password from the environment's secret)
    assert smoke["env"]["SMOKE_TEST_INBOX"] == "${{ vars.SMOKE_TEST_INBOX }}"
    assert smoke["env"]["PG_INBOX_PASSWORD"] == "${{ secrets.SMOKE_TEST_INBOX_PASSWORD }}"


@pytest.mark.parametrize(
    "recipient, inbox, argv",
    [
        ("you@example.com", "", "--stack prod --recipient you@example.com"),
        ("", "imaps://proof@gmail.com@imap.gmail.com", "--stack prod --inbox imaps://proof@gmail.com@imap.gmail.com"),
        ("a b@example.com", "imaps://x@h", "--stack prod --recipient a b@example.com --inbox imaps://x@h"),
    ],
)
def test_the_smoke_test_step_passes_the_recipient_and_the_inbox(tmp_path, recipient, inbox, argv):
    """The step's script run by bash with venv/bin/python a stub that records its arguments."""
    smoke = next(s for _, s in steps(load(DEPLOY)) if s.get("name") == "Smoke test")
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    stub = tmp_path / "venv" / "bin" / "python"
    stub.write_text('#!/bin/sh\nshift 2\nfor a in "$@"; do printf "%s|" "$a"; done\n')
    stub.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SMOKE_TEST_RECIPIENT": recipient, "SMOKE_TEST_INBOX": inbox}
    result = subprocess.run(
        ["bash", "-e", "-c", smoke["run"]], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    expected = argv.split()
    if " " in recipient:
        expected = ["--stack", "prod", "--recipient", recipient, "--inbox", inbox]
    expected.append("--skip-smtp")  # SMOKE_TEST_SMTP unset: a hosted runner is outside smtpSourceRanges
    assert result.stdout == "".join(f"{a}|" for a in expected)


@pytest.mark.parametrize("path", [PREVIEW, DEPLOY], ids=lambda p: p.name)
def test_workload_identity_and_environment_secrets_only(path):
    text, doc = path.read_text(), load(path)
    job, step = pulumi_step(doc)
    assert step["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert job["permissions"]["id-token"] == "write"
    auth = next(s for s in job["steps"] if s.get("uses", "").startswith("google-github-actions/auth@"))
    assert job["steps"].index(auth) < job["steps"].index(step)
    assert set(step["env"]) == {"PULUMI_CONFIG_PASSPHRASE", "CLOUDFLARE_API_TOKEN", "PULUMI_ACCESS_TOKEN"}
    # every credential-looking value anywhere is a ${{ secrets.X }} reference, never a literal
    sensitive = re.compile(r"(TOKEN|PASSPHRASE|PASSWORD|SECRET|API_KEY|CREDENTIALS)", re.I)
    for _, s in steps(doc):
        for key, value in {**s.get("env", {}), **s.get("with", {})}.items():
            if sensitive.search(key) and key not in ("github-token", "persist-credentials"):
                assert re.fullmatch(r"\$\{\{ secrets\.[A-Z_]+ \}\}", str(value)), (path.name, key, value)
    assert "credentials_json" not in text
    assert not any("--show-secrets" in s.get("run", "") for _, s in steps(doc))  # logs never get secrets
    assert not re.search(r"-----BEGIN|AIza[0-9A-Za-z_-]{20}|ya29\.|pul-[0-9a-f]{20}|ghp_[0-9A-Za-z]{20}", text)
    # the header documents every variable and secret the file uses
    header = text.split("\nname:", 1)[0]
    for name in {r.split(".")[1] for r in references(doc)}:
        assert name in header, f"{path.name}: {name} is not documented in the header comment"


@pytest.mark.parametrize("path", [PREVIEW, DEPLOY], ids=lambda p: p.name)
def test_ci_runs_the_test_entry_point_and_installs_only_the_repository_requirements(path):
    doc = load(path)
    assert [s["run"] for s in doc["jobs"]["test"]["steps"] if "run" in s] == ["bash .ci/run"]
    installs = [s["run"] for _, s in steps(doc) if "pip install" in s.get("run", "")]
    assert installs
    for run in installs:
        files = re.findall(r"pip install -r (\S+)", run)
        assert files and len(files) == run.count("pip install") and set(files) <= REQUIREMENTS, run


@pytest.mark.parametrize("path", [PREVIEW, DEPLOY], ids=lambda p: p.name)
def test_the_stack_file_is_checked_before_pulumi_runs(path):
    job, step = pulumi_step(load(path))
    check = next(s for s in job["steps"] if ".ci/check-stack" in s.get("run", ""))
    assert job["steps"].index(check) < job["steps"].index(step)
    assert check["env"] == {"PULUMI_BACKEND_URL": "${{ vars.PULUMI_BACKEND_URL }}"}
    if path == DEPLOY:
        assert check["run"] == ".ci/check-stack prod"  # prod is never optional
    else:
        assert "--optional" in check["run"] and "matrix.stack != 'prod'" in check["run"]
        gated = [s for s in job["steps"][job["steps"].index(check) + 1 :]]
        assert all(s.get("if") == "steps.stack.outputs.present == 'true'" for s in gated)


@pytest.fixture
def stack_dir(tmp_path):
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci/check-stack").write_text((program.ROOT / ".ci/check-stack").read_text())
    return tmp_path


def check_stack(root, *args, backend="gs://state"):
    out = root / "github_output"
    result = subprocess.run(
        ["bash", str(root / ".ci/check-stack"), *args],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(out), "PULUMI_BACKEND_URL": backend},
    )
    return result, out.read_text() if out.exists() else ""


@pytest.mark.parametrize(
    "content, args, backend, code, says",
    [
        (None, ["staging", "--optional"], "gs://state", 0, "present=false"),
        # the committed example before `pulumi stack init staging`: skipped, with a notice saying why
        ("config: {}\n", ["staging", "--optional"], "gs://state", 0, "has no secrets provider yet"),
        (None, ["prod"], "gs://state", 1, "Pulumi.prod.yaml is missing. Fix: pulumi stack init prod"),
        ("config: {}\n", ["prod"], "gs://state", 1, "has no encryptionsalt or secretsprovider"),
        ("config: {}\n", ["prod"], "", 0, "present=true"),  # Pulumi Cloud keeps the secrets provider
        ("encryptionsalt: v1:abc=:v1:def:ghi==\nconfig: {}\n", ["prod"], "gs://state", 0, "present=true"),
        (
            "secretsprovider: gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k\n",
            ["prod"],
            "gs://s",
            0,
            "present=true",
        ),
    ],
)
def test_check_stack_fails_with_the_fix(stack_dir, content, args, backend, code, says):
    if content is not None:
        (stack_dir / f"Pulumi.{args[0]}.yaml").write_text(content)
    result, output = check_stack(stack_dir, *args, backend=backend)
    assert result.returncode == code, result.stdout + result.stderr
    assert says in result.stdout + output


def test_workflows_are_green_for_a_repository_with_only_prod_set_up(stack_dir):
    """The committed Pulumi.staging.yaml (an example, no secrets provider) and a prod stack file with
    the lines `pulumi stack init prod` wrote: both workflows' checks pass, staging is skipped."""
    (stack_dir / "Pulumi.staging.yaml").write_text((program.ROOT / "Pulumi.staging.yaml").read_text())
    prod = "secretsprovider: gcpkms://projects/p/locations/l/keyRings/pulumi/cryptoKeys/postal-gateway\n"
    (stack_dir / "Pulumi.prod.yaml").write_text(prod + (program.ROOT / "Pulumi.prod.yaml").read_text())
    for stack in ("prod", "staging"):  # as preview.yml's matrix calls it
        (stack_dir / "github_output").unlink(missing_ok=True)
        result, output = check_stack(stack_dir, stack, *(["--optional"] if stack != "prod" else []))
        assert result.returncode == 0, result.stdout
        assert output == ("present=true\n" if stack == "prod" else "present=false\n")
    assert "::notice file=Pulumi.staging.yaml::" in result.stdout and "is skipped" in result.stdout
    result, _ = check_stack(stack_dir, "staging")  # not optional: still an error with the fix
    assert result.returncode == 1 and "gcpkms://" in result.stdout and "passphrase" in result.stdout


def test_readme_test_command_is_what_ci_runs():
    text = (program.ROOT / ".ci/run").read_text()
    assert "python -m pytest -q" in text and "requirements-dev.txt" in text


# GitHub's "Get an environment" reply (https://docs.github.com/en/rest/deployments/environments#get-an-environment,
# the documented example, abridged): a wait timer, required reviewers (a user and a team), a branch policy.
ENVIRONMENT = {
    "id": 161088068,
    "name": "preview",
    "protection_rules": [
        {"id": 3736, "node_id": "MDQ6R2F0ZTM3MzY=", "type": "wait_timer", "wait_timer": 30},
        {
            "id": 3755,
            "node_id": "MDQ6R2F0ZTM3NTU=",
            "prevent_self_review": False,
            "type": "required_reviewers",
            "reviewers": [
                {"type": "User", "reviewer": {"login": "octocat", "id": 1, "type": "User"}},
                {"type": "Team", "reviewer": {"id": 1, "name": "Justice League", "slug": "justice-league"}},
            ],
        },
        {"id": 3756, "node_id": "MDQ6R2F0ZTM3NTY=", "type": "branch_policy"},
    ],
    "deployment_branch_policy": {"protected_branches": False, "custom_branch_policies": True},
}
NO_REVIEWERS = {**ENVIRONMENT, "protection_rules": [ENVIRONMENT["protection_rules"][0]]}
SELF_REVIEW_PREVENTED = {
    **ENVIRONMENT,
    "protection_rules": [{**ENVIRONMENT["protection_rules"][1], "prevent_self_review": True}],
}


def check_environment(status, body):
    """.ci/check-environment preview against a local GitHub API answering `status` and `body`."""
    import http.server
    import json
    import threading

    seen = []

    class Api(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers["Authorization"], self.headers["Accept"]))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    # a short poll: shutdown() waits for serve_forever to look again (0.5 s by default)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        result = subprocess.run(
            [sys.executable, str(program.ROOT / ".ci/check-environment"), "preview"],
            capture_output=True,
            text=True,
            timeout=60,
            env={
                "PATH": os.environ["PATH"],
                "GITHUB_TOKEN": "ghs_test",
                "GITHUB_REPOSITORY": "acme/postal-gateway",
                "GITHUB_API_URL": f"http://127.0.0.1:{server.server_address[1]}",
            },
        )
    finally:
        server.shutdown()
    assert seen == [
        ("/repos/acme/postal-gateway/environments/preview", "Bearer ghs_test", "application/vnd.github+json")
    ]
    return result


@pytest.mark.parametrize(
    "status, body, code, says",
    [
        (200, ENVIRONMENT, 0, "required reviewers justice-league, octocat"),
        (200, ENVIRONMENT, 0, "::warning::environment preview: a reviewer may approve their own"),
        (200, SELF_REVIEW_PREVENTED, 0, "required reviewers"),
        (200, NO_REVIEWERS, 1, "::error::environment preview has no required reviewers"),
        (200, {**ENVIRONMENT, "protection_rules": []}, 1, "Settings → Environments → preview → Required reviewers"),
        (404, {"message": "Not Found"}, 1, "environment preview does not exist in acme/postal-gateway"),
        (403, {"message": "Resource not accessible by integration"}, 1, "needs `permissions: actions: read`"),
    ],
)
def test_the_preview_refuses_to_run_without_required_reviewers(status, body, code, says):
    result = check_environment(status, body)
    assert result.returncode == code, result.stdout + result.stderr
    assert says in result.stdout
    if body is SELF_REVIEW_PREVENTED:
        assert "::warning::" not in result.stdout


def test_codeowners_cover_what_production_runs():
    """Later lines win in CODEOWNERS (https://docs.github.com/en/repositories/managing-your-repositorys-settings-and-features/customizing-your-repository/about-code-owners):
    every guarded directory's last matching line names owners."""
    lines = [
        line.split()
        for line in (program.ROOT / ".github" / "CODEOWNERS").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for pattern, *owners in lines:
        assert owners and all(re.fullmatch(r"@[\w.-]+(/[\w.-]+)?|[^@\s]+@[\w.-]+", o) for o in owners), pattern
    for guarded in (
        ".github/workflows/deploy.yml",
        "policy/policies.py",
        "scripts/remote/lib.sh",
        "components/network.py",
    ):
        matching = [owners for pattern, *owners in lines if guarded.startswith(pattern.lstrip("/")) or pattern == "*"]
        assert matching and matching[-1], guarded
        assert (program.ROOT / guarded).exists()


# --- e2e.yml and drift.yml ---


def job_steps(doc, job):
    return doc["jobs"][job]["steps"]


def auth_of(job):
    return next(s for s in job["steps"] if s.get("uses", "").startswith("google-github-actions/auth@"))


def test_e2e_runs_by_hand_or_weekly_when_enabled_in_its_own_sandbox_environment():
    doc = load(E2E)
    assert "workflow_dispatch" in doc["on"] and doc["on"]["schedule"][0]["cron"].split()[2:] == ["*", "*", "1"]
    # the schedule is off unless the repository variable turns it on
    assert doc["jobs"]["test"]["if"] == "github.event_name == 'workflow_dispatch' || vars.E2E_WEEKLY == 'true'"
    job = doc["jobs"]["e2e"]
    assert job["needs"] == "test" and job["runs-on"] == "ubuntu-latest"  # GitHub-hosted
    assert job["environment"] == "e2e" and doc["concurrency"] == {"group": "e2e", "cancel-in-progress": False}
    assert auth_of(job)["with"] == {
        "workload_identity_provider": "${{ vars.GCP_E2E_WORKLOAD_IDENTITY_PROVIDER }}",
        "service_account": "${{ vars.GCP_E2E_SERVICE_ACCOUNT }}",
    }
    assert job["env"]["PULUMI_BACKEND_URL"] == "${{ vars.E2E_PULUMI_BACKEND_URL }}"  # not prod's state
    assert references(doc) & (DEPLOY_ONLY | {"vars.PULUMI_BACKEND_URL", "vars.GCP_PREVIEW_SERVICE_ACCOUNT"}) == set()
    assert not any(j.get("environment") in ("production", "preview") for j in doc["jobs"].values())
    assert {r for r in references(doc["jobs"]["test"])} == set()


def test_e2e_destroys_even_after_a_cancel_and_its_timeout_fits_in_the_job():
    job = load(E2E)["jobs"]["e2e"]
    run = next(s for s in job["steps"] if "-m scripts.e2e" in s.get("run", ""))
    timeout = int(run["run"].split("--timeout ")[1].split()[0])
    assert timeout + 20 * 60 <= job["timeout-minutes"] * 60  # room for the destroy after the script's deadline
    assert '--id "$STACK_ID"' in run["run"] and run["env"]["PG_E2E_INBOX"] == "${{ vars.E2E_INBOX }}"
    last = job["steps"][-1]
    assert last["if"] == "always()" and job["steps"].index(last) > job["steps"].index(run)
    assert 'stack="e2e-$STACK_ID"' in last["run"] and "pulumi destroy --yes" in last["run"]
    assert "pulumi stack rm --yes" in last["run"] and "|| true" not in last["run"]
    # the timing table reaches the job summary: e2e.py appends to $GITHUB_STEP_SUMMARY by default
    from scripts import e2e

    os.environ["GITHUB_STEP_SUMMARY"], saved = "/tmp/summary.md", os.environ.get("GITHUB_STEP_SUMMARY")
    try:
        assert str(e2e.parse_args(["--id", "x1"]).summary) == "/tmp/summary.md"
    finally:
        os.environ.pop("GITHUB_STEP_SUMMARY")
        if saved is not None:
            os.environ["GITHUB_STEP_SUMMARY"] = saved


def test_drift_previews_every_committed_stack_daily_with_the_read_only_identity():
    doc = load(DRIFT)
    minute, hour, *rest = doc["on"]["schedule"][0]["cron"].split()
    assert rest == ["*", "*", "*"] and "workflow_dispatch" in doc["on"]
    job = doc["jobs"]["drift"]
    assert job["strategy"]["matrix"]["stack"] == ["prod", "staging"] and job["strategy"]["fail-fast"] is False
    assert job["environment"] == "preview" and job["timeout-minutes"] <= 60
    assert auth_of(job)["with"] == {
        "workload_identity_provider": "${{ vars.GCP_PREVIEW_WORKLOAD_IDENTITY_PROVIDER }}",
        "service_account": "${{ vars.GCP_PREVIEW_SERVICE_ACCOUNT }}",
    }
    assert references(doc) & DEPLOY_ONLY == set()
    check = next(s for s in job["steps"] if ".ci/check-stack" in s.get("run", ""))
    drift = next(s for s in job["steps"] if "-m scripts.drift" in s.get("run", ""))
    assert job["steps"].index(check) < job["steps"].index(drift)
    assert '--stack "${{ matrix.stack }}"' in drift["run"]
    assert drift["env"]["CLOUDFLARE_API_TOKEN"] == "${{ secrets.CLOUDFLARE_API_TOKEN_READONLY }}"
    from scripts import drift as drift_script

    assert drift_script.PREVIEW_ARGS[:4] == ["pulumi", "preview", "--refresh", "--expect-no-changes"]


@pytest.mark.parametrize("path", [E2E, DRIFT], ids=lambda p: p.name)
def test_new_workflows_document_their_settings_and_never_show_secrets(path):
    text, doc = path.read_text(), load(path)
    header = text.split("\nname:", 1)[0]
    for name in {r.split(".")[1] for r in references(doc)}:
        assert name in header, f"{path.name}: {name} is not documented in the header comment"
    sensitive = re.compile(r"(TOKEN|PASSPHRASE|PASSWORD|SECRET|API_KEY|CREDENTIALS)", re.I)
    envs = [doc["jobs"][j].get("env", {}) for j in doc["jobs"]] + [s.get("env", {}) for _, s in steps(doc)]
    for env in envs:
        for key, value in env.items():
            if sensitive.search(key):
                assert re.fullmatch(r"\$\{\{ secrets\.[A-Z0-9_]+ \}\}", str(value)), (path.name, key, value)
    assert not any("--show-secrets" in s.get("run", "") for _, s in steps(doc))
    for name, job in doc["jobs"].items():
        secrets = {r for r in references(job) if r.startswith("secrets.")}
        assert not secrets or job.get("environment") in ("e2e", "preview"), name


@pytest.mark.parametrize("setting, checks_smtp", [("", False), ("false", False), ("true", True)])
def test_the_deploy_smoke_test_checks_smtp_only_from_inside_smtp_source_ranges(tmp_path, setting, checks_smtp):
    """A GitHub-hosted runner is never inside smtpSourceRanges: port 25 is checked only when the
    repository says the runner is (SMOKE_TEST_SMTP=true). The step's script runs against a stub Python."""
    smoke = next(s for _, s in steps(load(DEPLOY)) if s.get("name") == "Smoke test")
    (tmp_path / "venv/bin").mkdir(parents=True)
    stub = tmp_path / "venv/bin/python"
    stub.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\n')
    stub.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "SMOKE_TEST_RECIPIENT": "ops@example.com", "SMOKE_TEST_SMTP": setting}
    subprocess.run(["bash", "-e", "-c", smoke["run"]], cwd=tmp_path, env=env, check=True, timeout=30)
    args = (tmp_path / "venv/bin/args").read_text().split()
    assert args[:6] == ["-m", "scripts.smoke_test", "--stack", "prod", "--recipient", "ops@example.com"]
    assert ("--skip-smtp" not in args) == checks_smtp
