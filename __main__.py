"""postal-gateway: Postal on a GCE VM, relaying through Google Workspace, DNS on Cloudflare."""

import pulumi

from components import config, dns, tunnel
from components.apis import ApisArgs, ProjectApis
from components.backup import BackupArgs, OffsiteBackup
from components.bootstrap import BootstrapArgs, PostalBootstrap
from components.host import HostArgs, MailHost
from components.monitoring import MailMonitoring, MonitoringArgs, uptime_checker_ranges
from components.network import MailNetwork, NetworkArgs
from components.render import ORGANIZATION, SERVER
from components.secrets import MailSecrets, SecretsArgs

cfg = config.load()  # every config error stops the run here, before any resource
for warning in config.warnings(cfg):
    pulumi.log.warn(warning)
zone_ids = dns.lookup_zones(cfg)  # refuses to add a second SPF/DMARC record

apis = ProjectApis("postal", ApisArgs(project=cfg.project))  # every GCP resource waits for its API

network = MailNetwork(
    "postal",
    NetworkArgs(
        project=cfg.project,
        region=cfg.region,
        ssh_source_ranges=cfg.ssh_source_ranges,
        smtp_source_ranges=cfg.smtp_source_ranges,
        web_source_ranges=cfg.web_source_ranges,
        bounce_source_ranges=cfg.bounce_source_ranges,
        acme_http=cfg.tls == "letsencrypt",
        labels=cfg.gcp_labels,
        apis=apis,
        ephemeral=cfg.ephemeral,
    ),
)

host = MailHost(
    "postal",
    HostArgs(
        project=cfg.project,
        region=cfg.region,
        zone=cfg.zone,
        stack=cfg.stack,
        machine_type=cfg.machine_type,
        boot_disk_size_gb=cfg.boot_disk_size_gb,
        data_disk_size_gb=cfg.data_disk_size_gb,
        snapshot_retention_days=cfg.snapshot_retention_days,
        labels=cfg.gcp_labels,
        data_disk_snapshot=cfg.data_disk_snapshot,
        subnetwork_id=network.subnetwork_id,
        public_ip=network.public_ip,
        target_tag=network.target_tag,
        apis=apis,
        ephemeral=cfg.ephemeral,
    ),
)

secrets = MailSecrets("postal", SecretsArgs(sending_domains=cfg.sending_domains))

mail_dns = dns.MailDns(
    "postal",
    dns.DnsArgs(
        records=dns.record_specs(
            cfg, public_ip=network.public_ip, dkim=secrets.dkim, rp_dkim_public_key=secrets.signing_public_key_pem
        ),
        zone_ids=zone_ids,
        comment=dns.comment_for(cfg),
    ),
)

uptime_checkers = uptime_checker_ranges()  # the 443 rule admits them; Caddy lets them GET /login only

ssh_port = tunnel.local_port(cfg.project, cfg.stack)  # pulumi up's SSH goes through IAP
bootstrap = PostalBootstrap(
    "postal",
    BootstrapArgs(
        config=cfg,
        ssh_host=tunnel.ssh_host(cfg.project, cfg.zone, host.instance.name, ssh_port, after=[network.firewalls["ssh"]]),
        ssh_port=ssh_port,
        ssh_user=host.ssh_user,
        ssh_private_key=host.ssh_private_key,
        instance_id=host.instance_id,
        secrets=secrets,
        data_disk_id=host.data_disk.id,
        web_dns=[mail_dns.records["host-a"]],
        mail_dns=list(mail_dns.records.values()),
        uptime_checkers=uptime_checkers,
    ),
)

monitoring = MailMonitoring(
    "postal",
    MonitoringArgs(
        config=cfg,
        instance_id=host.instance_id,
        vpc_self_link=network.vpc.self_link,
        target_tag=network.target_tag,
        apis=apis,
        checker_ranges=uptime_checkers,
        postal_running=[bootstrap.steps["smtp-tls"], bootstrap.steps["ops"]],
    ),
)

backup = OffsiteBackup(
    "postal", BackupArgs(cfg, host.service_account.email, monitoring.channel.name, apis)
)  # encrypted on the VM, which may only create objects

web_url = f"https://{cfg.hostname}"
pulumi.export("publicIp", network.public_ip)
pulumi.export("hostname", cfg.hostname)
pulumi.export("webUrl", web_url)
pulumi.export("apiUrl", f"{web_url}/api/v1/send/message")
pulumi.export("smtpHost", cfg.hostname)
pulumi.export("smtpPort", 25)
pulumi.export("sendingDomains", list(cfg.sending_domains))
pulumi.export("dnsRecords", mail_dns.published)
pulumi.export("apiKey", secrets.api_key)
pulumi.export("smtpUsername", f"{ORGANIZATION['permalink']}/{SERVER['permalink']}")  # CRAM-MD5 needs it
pulumi.export("smtpPassword", secrets.smtp_key)
pulumi.export("adminEmail", cfg.admin_email)
pulumi.export("adminPassword", secrets.admin_password)
pulumi.export("sshUser", host.ssh_user)
pulumi.export("sshPrivateKey", host.ssh_private_key)
pulumi.export("instanceName", host.instance.name)  # gcloud compute ssh --tunnel-through-iap <it>
pulumi.export("relayStatus", bootstrap.relay_status)
pulumi.export("relayStatusByDomain", bootstrap.relay_status_by_domain)
pulumi.export("monitoringUrl", monitoring.url)
pulumi.export("backupLocation", backup.location)
