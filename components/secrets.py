"""MailSecrets: every generated secret (DKIM keys, Postal signing key, passwords, credential keys)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_random as random
import pulumi_tls as tls


@dataclass(frozen=True)
class SecretsArgs:
    sending_domains: tuple[str, ...]


@dataclass(frozen=True)
class DkimKey:
    selector: pulumi.Output  # 6 upper-case letters: Postal's dkim_identifier_string
    private_key_pem: pulumi.Output  # secret
    public_key_pem: pulumi.Output


class MailSecrets(pulumi.ComponentResource):
    """Outputs: `dkim` (domain -> DkimKey), `signing_key_pem`, `signing_public_key_pem` and the
    secret strings `db_root_password`, `db_password`, `admin_password`, `rails_secret_key`,
    `api_key`, `smtp_key`."""

    def __init__(self, name: str, args: SecretsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("postal-gateway:index:MailSecrets", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        def password(suffix: str, length: int) -> pulumi.Output:
            generated = random.RandomPassword(f"{name}-{suffix}", length=length, special=False, opts=child)
            return pulumi.Output.secret(generated.result)

        def rsa_key(suffix: str) -> tls.PrivateKey:
            return tls.PrivateKey(f"{name}-{suffix}", algorithm="RSA", rsa_bits=2048, opts=child)

        self.dkim: dict[str, DkimKey] = {}
        for domain in args.sending_domains:
            key = rsa_key(f"dkim-{domain}")
            selector = random.RandomString(
                f"{name}-dkim-selector-{domain}",
                length=6,
                upper=True,
                lower=False,
                numeric=False,
                special=False,
                opts=child,
            )
            self.dkim[domain] = DkimKey(
                selector=selector.result,
                private_key_pem=pulumi.Output.secret(key.private_key_pem),
                public_key_pem=key.public_key_pem,
            )
        signing = rsa_key("signing-key")
        self.signing_key_pem = pulumi.Output.secret(signing.private_key_pem)
        self.signing_public_key_pem = signing.public_key_pem
        self.db_root_password = password("db-root-password", 32)
        self.db_password = password("db-password", 32)
        self.admin_password = password("admin-password", 24)
        self.rails_secret_key = password("rails-secret-key", 64)
        self.api_key = password("api-key", 24)
        self.smtp_key = password("smtp-key", 24)
        self.register_outputs(
            {
                "signing_public_key_pem": self.signing_public_key_pem,
                "api_key": self.api_key,
                "smtp_key": self.smtp_key,
                "admin_password": self.admin_password,
            }
        )
