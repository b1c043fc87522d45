"""Consumes postal-gateway's outputs: the API endpoint and key for an application, the IP for an allowlist.

Provider-free on purpose: `mailEnv` is what you would hand to a container, a Cloud Run service or a
Kubernetes Secret; `allowlistCidr` is what a firewall in front of your application would admit.
"""

import pulumi

cfg = pulumi.Config()
gateway = pulumi.StackReference(cfg.get("gatewayStack") or "organization/postal-gateway/prod")

public_ip = gateway.require_output("publicIp")
api_url = gateway.require_output("apiUrl")
api_key = gateway.require_output("apiKey")  # secret in the gateway, so secret here too
sender = cfg.get("fromAddress") or gateway.require_output("sendingDomains").apply(lambda d: f"noreply@{d[0]}")

# One secret dict: the key never appears in clear in this stack's state or in `pulumi stack output`.
pulumi.export(
    "mailEnv",
    pulumi.Output.secret(
        {
            "POSTAL_API_URL": api_url,
            "POSTAL_API_KEY": api_key,
            "POSTAL_FROM": sender,
        }
    ),
)
pulumi.export("allowlistCidr", public_ip.apply(lambda ip: f"{ip}/32"))
