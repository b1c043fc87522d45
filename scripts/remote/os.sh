#!/usr/bin/env bash
# os: SELinux mode, packages, Docker CE, firewalld, the data disk mounted at $PG_DATA_DIR.
: "${PG_SELINUX:?}" "${PG_DATA_DEVICE:?}" "${PG_DATA_DIR:?}" "${PG_DATA_DISK_GB:?}"

pg_log "waiting for google-startup-scripts to finish"
for ((try = 0; try < 120; try++)); do
  if [[ $(systemctl show --property ActiveState --value google-startup-scripts.service) != activating ]]; then break; fi
  sleep 5
done

# SELinux: enforcing stays enforcing (Postal's volumes get container_file_t below);
# permissive is the documented fallback, made persistent.
want=${PG_SELINUX^}
if [[ $(getenforce) != "$want" ]]; then
  pg_log "SELinux: switching to $PG_SELINUX"
  if [[ $PG_SELINUX == enforcing ]]; then setenforce 1; else setenforce 0; fi
fi
selinux_config=$(sed "s/^SELINUX=.*/SELINUX=$PG_SELINUX/" "$PG_ROOT/etc/selinux/config")
pg_install_text 0644 root:root /etc/selinux/config "$selinux_config"$'\n'

# Rocky ships Podman; Postal's helper needs Docker CE with the compose plugin.
pg_dnf_install dnf-plugins-core git jq curl firewalld policycoreutils-python-utils xfsprogs
if [[ ! -f $PG_ROOT/etc/yum.repos.d/docker-ce.repo ]]; then
  pg_log "adding Docker's dnf repository"
  dnf config-manager --add-repo https://download.docker.com/linux/rhel/docker-ce.repo
fi
pg_dnf_install docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin

# firewalld: rules go to the permanent configuration; a reload makes them current (also when a
# previous run added them and failed before reloading).
pg_enable_unit firewalld
reload=0
for rule in service=http service=https port=25/tcp; do
  if ! firewall-cmd --permanent --query-"$rule" >/dev/null; then
    pg_log "firewalld: allowing ${rule#*=}"
    firewall-cmd --permanent --add-"$rule" >/dev/null
  fi
  if ! firewall-cmd --query-"$rule" >/dev/null; then reload=1; fi
done
if ((reload)); then firewall-cmd --reload >/dev/null; fi

# Data disk: formatted only when blank, mounted by UUID.
[[ -e $PG_ROOT$PG_DATA_DEVICE ]] || pg_fail "data disk $PG_DATA_DEVICE is not attached"
pg_blkid() { # pg_blkid <tag>: the data disk's tag, empty when it has none (blkid exits 2)
  local rc=0
  blkid --match-tag "$1" --output value "$PG_ROOT$PG_DATA_DEVICE" || rc=$?
  ((rc == 0 || rc == 2)) || pg_fail "blkid $PG_DATA_DEVICE exited $rc"
}
if [[ -z $(pg_blkid TYPE) ]]; then
  pg_log "formatting the blank data disk $PG_DATA_DEVICE (xfs)"
  mkfs.xfs -q -L postal-data "$PG_ROOT$PG_DATA_DEVICE"
fi
uuid=$(pg_blkid UUID)
[[ -n $uuid ]] || pg_fail "no filesystem UUID on $PG_DATA_DEVICE"
fstab=$(grep -v " $PG_DATA_DIR " "$PG_ROOT/etc/fstab" || [[ $? == 1 ]])
pg_install_text 0644 root:root /etc/fstab "$fstab"$'\n'"UUID=$uuid $PG_DATA_DIR xfs defaults,nofail 0 2"$'\n'
mkdir -p "$PG_ROOT$PG_DATA_DIR"
# A restored disk (new filesystem UUID) replaces the one mounted here while the containers still
# hold the old mount: stop them (Docker), swap the mount; Docker starts below and brings them back.
mounted=absent
if current=$(findmnt --noheadings --output UUID --mountpoint "$PG_ROOT$PG_DATA_DIR"); then mounted=$current; fi
if [[ $mounted != absent && $mounted != "$uuid" ]]; then
  pg_log "data disk changed (${mounted:-detached} -> $uuid): remounting $PG_DATA_DIR"
  systemctl stop docker
  umount --lazy "$PG_ROOT$PG_DATA_DIR"
  mounted=absent
fi
if [[ $mounted == absent ]]; then
  pg_log "mounting $PG_DATA_DIR"
  mount "$PG_ROOT$PG_DATA_DIR"
fi
# A grown disk (dataDiskSizeGb) gets a grown filesystem; GCE disk sizes move in whole GB.
device_bytes=$(blockdev --getsize64 "$PG_ROOT$PG_DATA_DEVICE")
((device_bytes >= PG_DATA_DISK_GB << 30)) ||
  pg_fail "the data disk shows $((device_bytes >> 30)) GiB, dataDiskSizeGb is $PG_DATA_DISK_GB: rerun \`pulumi up\` once the resize reached the VM"
fs_blocks=$(xfs_info "$PG_ROOT$PG_DATA_DIR" | sed -n 's/^data *= *bsize=\([0-9]*\) *blocks=\([0-9]*\).*/\1 \2/p')
[[ $fs_blocks =~ ^[0-9]+\ [0-9]+$ ]] || pg_fail "xfs_info $PG_DATA_DIR: no data block count"
fs_bytes=$((${fs_blocks% *} * ${fs_blocks#* }))
if ((device_bytes - fs_bytes > 1 << 30)); then
  pg_log "growing the filesystem on $PG_DATA_DIR to $((device_bytes >> 30)) GiB"
  xfs_growfs "$PG_ROOT$PG_DATA_DIR" >/dev/null
fi

if [[ $PG_SELINUX == enforcing ]]; then
  rule="$PG_DATA_DIR(/.*)?"
  if ! grep -qF "$rule" <<<"$(semanage fcontext --list --locallist)"; then
    pg_log "SELinux: labelling $PG_DATA_DIR container_file_t"
    semanage fcontext --add --type container_file_t "$rule"
  fi
  if ! pg_applied selinux-label "$uuid"; then
    restorecon -R "$PG_ROOT$PG_DATA_DIR"
    pg_mark_applied selinux-label "$uuid"
  fi
fi

# Containers must never start before the data disk is mounted (they would write to the boot
# disk); with SELinux enforcing, Docker confines them too (container_t, volumes container_file_t).
dropin=/etc/systemd/system/docker.service.d/postal-gateway.conf
pg_install_text 0644 root:root "$dropin" "[Unit]"$'\n'"RequiresMountsFor=$PG_DATA_DIR"$'\n'
selinux_enabled=false
if [[ $PG_SELINUX == enforcing ]]; then selinux_enabled=true; fi
# Container output goes to the journal under the container's name, where the Ops Agent reads it.
printf -v daemon_json '{\n  "selinux-enabled": %s,\n  "log-driver": "journald",\n  "log-opts": {"tag": "{{.Name}}"}\n}\n' "$selinux_enabled"
pg_install_text 0644 root:root /etc/docker/daemon.json "$daemon_json"
pg_fingerprint "$dropin" /etc/docker/daemon.json
docker_config=$PG_FINGERPRINT
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
