"""Every GCP resource of the whole program waits for the Service that enables its API.

The engine orders creation only by a resource's own dependencies (`RegisterResourceRequest.dependencies`:
explicit depends_on, with a component expanded to its custom children, plus the resources its inputs
come from). A component's depends_on is not passed to its children, so the check follows dependency
edges between custom resources only, never parent links.

Which API a type needs (Google's API references): Compute Engine resources -> compute.googleapis.com;
service accounts -> iam.googleapis.com (IAM API projects.serviceAccounts); project IAM members ->
cloudresourcemanager.googleapis.com (projects.getIamPolicy/setIamPolicy) and iam.googleapis.com (the
member is a service account); Cloud Monitoring / Cloud Logging resources -> monitoring / logging.
gcp.projects.Service itself uses serviceusage.googleapis.com, enabled by default in every project
(https://cloud.google.com/service-usage/docs/enabled-service#default).
"""

import dataclasses

import pytest

from components.apis import APIS

SERVICE = "gcp:projects/service:Service"
API_BY_TYPE = {  # exact type, or a prefix ending in "/" for a whole module
    "gcp:compute/": ("compute.googleapis.com",),
    "gcp:serviceaccount/": ("iam.googleapis.com",),
    "gcp:projects/iAMMember:IAMMember": ("cloudresourcemanager.googleapis.com", "iam.googleapis.com"),
    "gcp:monitoring/": ("monitoring.googleapis.com",),
    "gcp:logging/": ("logging.googleapis.com",),
    "gcp:storage/bucket:Bucket": ("storage.googleapis.com",),
    # the member is a service account (iam); the bucket's policy is set through the storage API
    "gcp:storage/bucketIAMMember:BucketIAMMember": ("storage.googleapis.com", "iam.googleapis.com"),
    SERVICE: (),
}


def apis_for(typ):
    """The APIs a resource type needs; None for a gcp type nobody has mapped yet."""
    matches = [key for key in API_BY_TYPE if typ == key or (key.endswith("/") and typ.startswith(key))]
    return API_BY_TYPE[max(matches, key=len)] if matches else None


def missing_apis(resources):
    """One line per gcp resource that is not ordered after the Service of each API it needs."""
    by_urn = {r.urn: r for r in resources}

    def reachable_services(start):
        seen, todo, found = set(), list(start.depends_on), set()
        while todo:
            urn = todo.pop()
            target = by_urn.get(urn)
            if urn in seen or target is None or not target.custom:  # a component orders nothing
                continue
            seen.add(urn)
            if target.type == SERVICE:
                found.add(target.inputs["service"])
            todo.extend(target.depends_on)
        return found

    problems = []
    for resource in resources:
        if not resource.type.startswith("gcp:"):
            continue
        needed = apis_for(resource.type)
        if needed is None:
            problems.append(f"{resource.name}: no API known for {resource.type}: add it to API_BY_TYPE")
            continue
        lacking = set(needed) - reachable_services(resource)
        if lacking:
            problems.append(f"{resource.name} ({resource.type}) does not wait for {sorted(lacking)}")
    return problems


def test_every_gcp_resource_waits_for_its_api(run):
    types = {r.type for r in run.resources if r.type.startswith("gcp:")}
    assert {
        "gcp:compute/instance:Instance",
        "gcp:serviceaccount/account:Account",
        "gcp:projects/iAMMember:IAMMember",
        SERVICE,
    } <= types  # the check really covers them
    assert missing_apis(run.resources) == []


def test_each_api_is_enabled_once_and_never_disabled_on_destroy(run):
    services = run.of_type(SERVICE)
    assert sorted(s.inputs["service"] for s in services) == sorted(APIS)
    assert all(s.inputs["disableOnDestroy"] is False and s.inputs["project"] == "acme-mail" for s in services)
    assert all(s.depends_on == [] for s in services)  # Service Usage is on by default: nothing to wait for
    needed = {api for r in run.resources if r.type.startswith("gcp:") for api in apis_for(r.type)}
    assert needed <= set(APIS)


def test_the_check_fails_for_a_resource_that_does_not_wait(run):
    services = {s.urn for s in run.of_type(SERVICE)}

    def without_services(*names):
        return [
            dataclasses.replace(r, depends_on=[u for u in r.depends_on if u not in services]) if r.name in names else r
            for r in run.resources
        ]

    # the subnet still waits through its VPC (network=vpc.id): transitively ordered, so accepted
    assert missing_apis(without_services("postal-subnet")) == []
    assert missing_apis(without_services("postal-vpc", "postal-subnet")) == [
        f"{name} (gcp:compute/{typ}) does not wait for ['compute.googleapis.com']"
        for name, typ in (("postal-vpc", "network:Network"), ("postal-subnet", "subnetwork:Subnetwork"))
    ]


def test_a_component_dependency_does_not_count_for_its_children(run):
    network = next(r for r in run.resources if r.type == "postal-gateway:index:MailNetwork")
    (address,) = run.of_type("gcp:compute/address:Address")
    services = {s.urn for s in run.of_type(SERVICE)}
    moved = dataclasses.replace(network, depends_on=sorted(services))  # the component waits …
    orphan = dataclasses.replace(address, depends_on=[u for u in address.depends_on if u not in services])
    resources = [moved if r is network else orphan if r is address else r for r in run.resources]
    assert missing_apis(resources) == [f"{address.name} ({address.type}) does not wait for ['compute.googleapis.com']"]


def test_an_unmapped_gcp_type_fails(run):
    (vm,) = run.of_type("gcp:compute/instance:Instance")
    topic = dataclasses.replace(vm, name="logs", type="gcp:pubsub/topic:Topic", urn=vm.urn + "-topic")
    assert missing_apis(run.resources + [topic]) == [
        "logs: no API known for gcp:pubsub/topic:Topic: add it to API_BY_TYPE"
    ]


def test_iam_member_needs_both_apis():
    assert apis_for("gcp:projects/iAMMember:IAMMember") == ("cloudresourcemanager.googleapis.com", "iam.googleapis.com")
    assert apis_for("gcp:projects/iAMBinding:IAMBinding") is None  # not mapped: fails until someone decides


def test_after_refuses_an_api_that_is_not_enabled(run):
    from components.apis import ProjectApis

    fake = ProjectApis.__new__(ProjectApis)
    fake.services = {}
    with pytest.raises(ValueError, match="enable it in components/apis.py APIS"):
        fake.after("sqladmin.googleapis.com", parent=None)
