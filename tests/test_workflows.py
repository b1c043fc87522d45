"""GitHub Actions workflows: schema-valid (check-jsonschema's vendored schema, offline) and wired as documented."""

import re
import subprocess

import pytest
import yaml

import program

WORKFLOWS = program.ROOT / ".github" / "workflows"
PREVIEW, DEPLOY = WORKFLOWS / "preview.yml", WORKFLOWS / "deploy.yml"
REQUIREMENTS = {"requirements.txt", "requirements-dev.txt", "policy/requirements.txt"}


def check_jsonschema(*paths):
    return subprocess.run([program.tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                           *map(str, paths)], capture_output=True, text=True, timeout=120)


def load(path):
    doc = yaml.safe_load(path.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def steps(doc):
    return [(name, step) for name, job in doc["jobs"].items() for step in job.get("steps", [])]


def pulumi_step(doc):
    ((job, step),) = [(j, s) for j, s in steps(doc) if s.get("uses", "").startswith("pulumi/actions@")]
    return doc["jobs"][job], step


def test_workflows_match_the_github_schema():
    result = check_jsonschema(PREVIEW, DEPLOY)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("old, new, error", [
    ("  pull_request:\n", "  pull_requestt:\n", "pull_requestt"),
    ("runs-on: ubuntu-latest", "runs-on: 5", "runs-on"),
])
def test_a_broken_workflow_is_rejected(tmp_path, old, new, error):
    broken = tmp_path / "broken.yml"
    broken.write_text(PREVIEW.read_text().replace(old, new, 1))
    result = check_jsonschema(broken)
    assert result.returncode == 1 and error in result.stdout, result.stdout + result.stderr


def test_preview_comments_a_preview_of_prod_on_pull_requests():
    doc = load(PREVIEW)
    assert list(doc["on"]) == ["pull_request"] and doc["on"]["pull_request"]["branches"] == ["main"]
    job, step = pulumi_step(doc)
    assert step["uses"] == "pulumi/actions@v6"
    assert step["with"]["command"] == "preview" and step["with"]["comment-on-pr"] is True
    assert job["permissions"]["pull-requests"] == "write"
    assert "test" in job["needs"]


@pytest.mark.parametrize("workflow", [PREVIEW, DEPLOY])
def test_preview_and_up_run_the_policy_pack_in_the_venv_its_yaml_names(workflow):
    _, step = pulumi_step(load(workflow))
    assert step["with"]["policyPacks"].split()[0] == "policy"
    install = next(s for _, s in steps(load(workflow)) if "policy/requirements.txt" in s.get("run", ""))
    venv = yaml.safe_load((program.ROOT / "policy" / "PulumiPolicy.yaml").read_text())["runtime"]["options"]
    assert f"-m venv policy/{venv['virtualenv']} " in install["run"]


def test_deploy_runs_up_on_main_one_at_a_time_behind_the_production_environment():
    doc = load(DEPLOY)
    assert doc["on"]["push"]["branches"] == ["main"] and "workflow_dispatch" in doc["on"]
    assert doc["concurrency"]["group"] and doc["concurrency"]["cancel-in-progress"] is False
    job, step = pulumi_step(doc)
    assert step["uses"] == "pulumi/actions@v6" and step["with"]["command"] == "up"
    assert job["environment"] == "production" and "test" in job["needs"]
    runs = [s for s in job["steps"] if "run" in s]
    after = runs[runs.index(next(s for s in runs if "pulumi stack output" in s["run"])):]
    assert "--json" in after[0]["run"] and "--show-secrets" not in after[0]["run"]
    smoke = after[1]
    assert smoke["if"] == "vars.SMOKE_TEST_RECIPIENT != ''" and smoke["continue-on-error"] is False
    assert "-m scripts.smoke_test --stack prod --recipient" in smoke["run"]
    assert smoke["env"]["SMOKE_TEST_RECIPIENT"] == "${{ vars.SMOKE_TEST_RECIPIENT }}"


@pytest.mark.parametrize("path", [PREVIEW, DEPLOY], ids=lambda p: p.name)
def test_prod_via_workload_identity_and_repository_secrets_only(path):
    text, doc = path.read_text(), load(path)
    job, step = pulumi_step(doc)
    assert step["with"]["stack-name"] == "prod"
    assert step["with"]["cloud-url"] == "${{ vars.PULUMI_BACKEND_URL }}"
    assert job["permissions"]["id-token"] == "write"
    auth = next(s for s in job["steps"] if s.get("uses") == "google-github-actions/auth@v2")
    assert auth["with"] == {"workload_identity_provider": "${{ vars.GCP_WORKLOAD_IDENTITY_PROVIDER }}",
                            "service_account": "${{ vars.GCP_SERVICE_ACCOUNT }}"}
    assert job["steps"].index(auth) < job["steps"].index(step)
    assert step["env"] == {name: f"${{{{ secrets.{name} }}}}" for name in
                           ("PULUMI_CONFIG_PASSPHRASE", "CLOUDFLARE_API_TOKEN", "PULUMI_ACCESS_TOKEN")}
    # every credential-looking value anywhere is a ${{ secrets.X }} reference, never a literal
    sensitive = re.compile(r"(TOKEN|PASSPHRASE|PASSWORD|SECRET|API_KEY|CREDENTIALS)", re.I)
    for _, s in steps(doc):
        for key, value in {**s.get("env", {}), **s.get("with", {})}.items():
            if sensitive.search(key) and key != "github-token":
                assert re.fullmatch(r"\$\{\{ secrets\.[A-Z_]+ \}\}", str(value)), (path.name, key, value)
    assert "credentials_json" not in text
    assert not any("--show-secrets" in s.get("run", "") for _, s in steps(doc))  # logs never get secrets
    assert not re.search(r"-----BEGIN|AIza[0-9A-Za-z_-]{20}|ya29\.|pul-[0-9a-f]{20}|ghp_[0-9A-Za-z]{20}", text)
    # the header documents every variable and secret the file uses
    header = text.split("\nname:", 1)[0]
    for name in set(re.findall(r"\$\{\{ (?:secrets|vars)\.([A-Z_]+) \}\}", text)):
        assert name in header, f"{path.name}: {name} is not documented in the header comment"


@pytest.mark.parametrize("path", [PREVIEW, DEPLOY], ids=lambda p: p.name)
def test_every_install_uses_the_repository_requirements(path):
    installs = [s["run"] for _, s in steps(load(path)) if "pip install" in s.get("run", "")]
    assert installs
    for run in installs:
        files = re.findall(r"pip install -r (\S+)", run)
        assert files and len(files) == run.count("pip install") and set(files) <= REQUIREMENTS, run
    _, tests = next((j, s) for j, s in steps(load(path)) if "pytest" in s.get("run", ""))
    assert tests["run"] == "python -m pytest -q"
