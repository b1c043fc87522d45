"""MailNetwork: a VPC without IPv6, the static public IP and firewall rules (22 from IAP's TCP
forwarding range and, opt-in, from sshSourceRanges; 25 from smtpSourceRanges and, for bounces, from
bounceSourceRanges — by default Google's outbound mail servers —; 80 from anywhere for ACME, only with
tls=letsencrypt; 443 from webSourceRanges)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from components.apis import ProjectApis

TARGET_TAG = "postal-gateway"
SUBNET_RANGE = "10.64.0.0/24"
# IAP TCP forwarding connects from this range (https://cloud.google.com/iap/docs/using-tcp-forwarding,
# "Create a firewall rule"); only identities with roles/iap.tunnelResourceAccessor get through it.
IAP_RANGE = "35.235.240.0/20"


@dataclass(frozen=True)
class NetworkArgs:
    project: str
    region: str
    ssh_source_ranges: tuple[str, ...]
    smtp_source_ranges: tuple[str, ...]
    web_source_ranges: tuple[str, ...]
    acme_http: bool  # tls=letsencrypt: Let's Encrypt's HTTP-01 challenge needs port 80
    labels: dict[str, str]
    apis: ProjectApis
    bounce_source_ranges: tuple[str, ...] = ()  # empty: no bounce rule
    ephemeral: bool = False  # throwaway stack: the static IP is not protected


class MailNetwork(pulumi.ComponentResource):
    """Outputs: `address` (the relay allowlist IP), `subnetwork_id`, `target_tag`, `firewalls`."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("postal-gateway:index:MailNetwork", name, None, opts)
        child = args.apis.after("compute.googleapis.com", parent=self)
        self.vpc = gcp.compute.Network(
            f"{name}-vpc", project=args.project, auto_create_subnetworks=False, description="postal-gateway", opts=child
        )
        self.subnetwork = gcp.compute.Subnetwork(
            f"{name}-subnet",
            project=args.project,
            region=args.region,
            network=self.vpc.id,
            ip_cidr_range=SUBNET_RANGE,
            stack_type="IPV4_ONLY",
            private_ip_google_access=True,
            opts=child,
        )
        self.address = gcp.compute.Address(
            f"{name}-ip",
            project=args.project,
            region=args.region,
            address_type="EXTERNAL",
            network_tier="PREMIUM",
            labels=args.labels,
            description="postal-gateway public IP: the Google Workspace SMTP relay allowlist entry",
            opts=args.apis.after("compute.googleapis.com", parent=self, protect=not args.ephemeral),
        )
        rules = {
            "ssh": (["22"], (IAP_RANGE,)),  # pulumi up's remote steps and operators, through IAP
            **({"ssh-direct": (["22"], args.ssh_source_ranges)} if args.ssh_source_ranges else {}),
            "smtp": (["25"], args.smtp_source_ranges),
            # Bounces (DSNs to <token>@psrp.<domain>) come from Google's mail servers, whose MX is port 25.
            **({"bounce": (["25"], args.bounce_source_ranges)} if args.bounce_source_ranges else {}),
            # Let's Encrypt's HTTP-01 challenge comes from anywhere; Caddy redirects the rest to 443.
            **({"http": (["80"], ("0.0.0.0/0",))} if args.acme_http else {}),
            "https": (["443"], args.web_source_ranges),
        }
        self.firewalls = {
            rule: gcp.compute.Firewall(
                f"{name}-allow-{rule}",
                project=args.project,
                network=self.vpc.self_link,
                direction="INGRESS",
                allows=[{"protocol": "tcp", "ports": ports}],
                source_ranges=list(ranges),
                target_tags=[TARGET_TAG],
                opts=child,
            )
            for rule, (ports, ranges) in rules.items()
        }
        self.target_tag = TARGET_TAG
        self.public_ip = self.address.address
        self.subnetwork_id = self.subnetwork.id
        self.register_outputs({"public_ip": self.public_ip, "subnetwork_id": self.subnetwork_id})
