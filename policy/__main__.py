"""postal-gateway guardrails, run by `pulumi preview/up --policy-pack policy`.

The engine runs this file with the pack directory on sys.path, hence the plain `policies` import.
Constructing the PolicyPack serves the analyzer and blocks, which is why only this file does it.
"""

from policies import POLICIES
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(
    name="postal-gateway-guardrails",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
