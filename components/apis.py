"""ProjectApis: every Google API the program uses, enabled as `gcp.projects.Service`.

A new project has only Google's default services enabled; compute, iam and cloudresourcemanager
are not among them, and a resource created while its API is still being enabled fails with
"API has not been used in project … or it is disabled". Every GCP resource therefore waits for
the Service of its API:

    self.vm = gcp.compute.Instance(..., opts=args.apis.after("compute.googleapis.com", parent=self))
    self.member = gcp.projects.IAMMember(..., opts=args.apis.after(
        "cloudresourcemanager.googleapis.com", "iam.googleapis.com", parent=self, protect=True))

`after` takes any other ResourceOptions keyword (`depends_on` is merged with the APIs). Set it on
every GCP resource itself: children of a component do not inherit the component's dependencies.
A new API is one more entry in APIS. tests/test_apis.py maps every `gcp:` resource type to its
API(s) and fails for a resource that does not wait for them, or for a type it does not know.

The Service resources themselves use the Service Usage API (serviceusage.googleapis.com), which
Google enables by default in every new project, so they wait for nothing. The provider also reads
the project through the Cloud Resource Manager API, billed to the credentials' quota project: if
that is this same, brand-new project, enable it once by hand (see docs/runbook.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

APIS = (
    "compute.googleapis.com",  # network, address, firewalls, disks, snapshot schedule, VM
    "iam.googleapis.com",  # the VM's service account
    "cloudresourcemanager.googleapis.com",  # project IAM members
    "logging.googleapis.com",  # the VM writes logs (roles/logging.logWriter)
    "monitoring.googleapis.com",  # the VM writes metrics (roles/monitoring.metricWriter)
    "storage.googleapis.com",  # the off-site backup bucket and its IAM member
)


@dataclass(frozen=True)
class ApisArgs:
    project: str


class ProjectApis(pulumi.ComponentResource):
    """Outputs: `services` (API name -> Service). `after(api, …, parent=…)` gives a resource's options."""

    def __init__(self, name: str, args: ApisArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("postal-gateway:index:ProjectApis", name, None, opts)
        # the compute API was MailNetwork's child before this component existed: same resource, no diff
        moved = {
            "compute.googleapis.com": [pulumi.Alias(parent=pulumi.create_urn(name, "postal-gateway:index:MailNetwork"))]
        }
        self.services = {
            api: gcp.projects.Service(
                f"{name}-{api.split('.')[0]}-api",
                project=args.project,
                service=api,
                # other stacks or people may use the API too: never switch it off on destroy
                disable_on_destroy=False,
                opts=pulumi.ResourceOptions(parent=self, aliases=moved.get(api)),
            )
            for api in APIS
        }
        self.register_outputs({"services": {api: s.service for api, s in self.services.items()}})

    def after(self, *apis: str, parent: pulumi.Resource, **options) -> pulumi.ResourceOptions:
        """Options for a child of `parent` that is created only once these APIs are enabled."""
        unknown = [api for api in apis if api not in self.services]
        if unknown or not apis:
            raise ValueError(f"ProjectApis.after: {unknown or 'no API'} given; enable it in components/apis.py APIS")
        depends_on = options.pop("depends_on", None) or []
        depends_on = [depends_on] if isinstance(depends_on, pulumi.Resource) else list(depends_on)
        return pulumi.ResourceOptions(
            parent=parent, depends_on=depends_on + [self.services[api] for api in apis], **options
        )
