#!/usr/bin/env bash
# os: SELinux mode, packages, Docker CE, firewalld, the data disk mounted at $PG_DATA_DIR.
: "${PG_SELINUX:?}" "${PG_DATA_DEVICE:?}" "${PG_DATA_DIR:?}"

pg_log "waiting for google-startup-scripts to finish"
for _ in $(seq 1 120); do
  [[ $(systemctl show --property ActiveState --value google-startup-scripts.service) != activating ]] && break
  sleep 5
done

# SELinux: enforcing stays enforcing (Postal's volumes get container_file_t below);
# permissive is the documented fallback, made persistent.
selinux_config=$PG_ROOT/etc/selinux/config
want=${PG_SELINUX^}
if [[ $(getenforce) != "$want" ]]; then
  pg_log "SELinux: switching to $PG_SELINUX"
  setenforce "$([[ $PG_SELINUX == enforcing ]] && echo 1 || echo 0)"
fi
if ! grep -qx "SELINUX=$PG_SELINUX" "$selinux_config"; then
  pg_log "SELinux: $PG_SELINUX in /etc/selinux/config"
  sed -i "s/^SELINUX=.*/SELINUX=$PG_SELINUX/" "$selinux_config"
fi

# Rocky ships Podman; Postal's helper needs Docker CE with the compose plugin.
pg_dnf_install dnf-plugins-core git jq curl firewalld policycoreutils-python-utils xfsprogs
if [[ ! -f $PG_ROOT/etc/yum.repos.d/docker-ce.repo ]]; then
  pg_log "adding Docker's dnf repository"
  dnf config-manager --add-repo https://download.docker.com/linux/rhel/docker-ce.repo
fi
pg_dnf_install docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin

pg_enable_unit firewalld
reload=0
for service in http https; do
  firewall-cmd --permanent --query-service="$service" >/dev/null ||
    { pg_log "firewalld: allowing $service"; firewall-cmd --permanent --add-service="$service" >/dev/null; reload=1; }
done
firewall-cmd --permanent --query-port=25/tcp >/dev/null ||
  { pg_log "firewalld: allowing 25/tcp"; firewall-cmd --permanent --add-port=25/tcp >/dev/null; reload=1; }
((reload == 0)) || firewall-cmd --reload >/dev/null

# Data disk: formatted only when blank, mounted by UUID.
[[ -e $PG_ROOT$PG_DATA_DEVICE ]] || pg_fail "data disk $PG_DATA_DEVICE is not attached"
if [[ -z $(blkid --match-tag TYPE --output value "$PG_ROOT$PG_DATA_DEVICE" || true) ]]; then
  pg_log "formatting the blank data disk $PG_DATA_DEVICE (xfs)"
  mkfs.xfs -q -L postal-data "$PG_ROOT$PG_DATA_DEVICE"
fi
uuid=$(blkid --match-tag UUID --output value "$PG_ROOT$PG_DATA_DEVICE")
[[ -n $uuid ]] || pg_fail "no filesystem UUID on $PG_DATA_DEVICE"
fstab=$PG_ROOT/etc/fstab
if ! grep -q "^UUID=$uuid $PG_DATA_DIR " "$fstab"; then
  pg_log "fstab: UUID=$uuid on $PG_DATA_DIR"
  sed -i "\\# $PG_DATA_DIR #d" "$fstab"
  echo "UUID=$uuid $PG_DATA_DIR xfs defaults,nofail 0 2" >>"$fstab"
fi
mkdir -p "$PG_ROOT$PG_DATA_DIR"
mountpoint -q "$PG_ROOT$PG_DATA_DIR" || { pg_log "mounting $PG_DATA_DIR"; mount "$PG_ROOT$PG_DATA_DIR"; }

if [[ $PG_SELINUX == enforcing ]]; then
  rule="$PG_DATA_DIR(/.*)?"
  rules=$(semanage fcontext --list --locallist)
  if ! grep -qF "$rule" <<<"$rules"; then
    pg_log "SELinux: labelling $PG_DATA_DIR container_file_t"
    semanage fcontext --add --type container_file_t "$rule"
    restorecon -R "$PG_ROOT$PG_DATA_DIR"
  fi
fi

# Containers must never start before the data disk is mounted (they would write to the boot
# disk); with SELinux enforcing, Docker confines them too (container_t, volumes container_file_t).
dropin=/etc/systemd/system/docker.service.d/postal-gateway.conf
printf '[Unit]\nRequiresMountsFor=%s\n' "$PG_DATA_DIR" | pg_install 0644 root:root "$dropin" || true
# Container output goes to the journal under the container's name, where the Ops Agent reads it.
printf '{\n  "selinux-enabled": %s,\n  "log-driver": "journald",\n  "log-opts": {"tag": "{{.Name}}"}\n}\n' \
  "$([[ $PG_SELINUX == enforcing ]] && echo true || echo false)" |
  pg_install 0644 root:root /etc/docker/daemon.json || true
docker_config=$(pg_fingerprint "$dropin" /etc/docker/daemon.json)
if ! pg_applied docker "$docker_config"; then
  systemctl daemon-reload
  if systemctl is-active --quiet docker; then
    pg_log "restarting Docker for its new settings"
    systemctl restart docker
  fi
fi
pg_enable_unit docker
pg_mark_applied docker "$docker_config"
pg_log "done"
