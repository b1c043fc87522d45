#!/usr/bin/env bash
# postal-gateway-restore <postal-backup-….tar>: puts an off-site backup, decrypted on an operator's
# machine (scripts/restore_drill.py fetch), back onto this VM. Nothing changes until the whole archive
# has been read and every file matched its SHA256SUMS line; then the MariaDB backup goes into
# /opt/postal/backup/mariadb and postal-gateway-restore-db restores it (Postal and MariaDB stopped
# meanwhile, the replaced data kept beside). Postal's config from the backup is kept in
# /opt/postal/config/restored-<time>/ for comparison: the live one is the stack's (pulumi up wrote it).
set -euo pipefail
root=${PG_ROOT:-}
data=/opt/postal
backups=$data/backup/mariadb
bundle=${1:?usage: postal-gateway-restore <postal-backup-TIME.tar>}
fail() {
  echo "postal-gateway-restore: $*; nothing was changed" >&2
  exit 1
}
[[ -f $bundle ]] || fail "$bundle does not exist"

# Only the names the upload writes (flat, no path): GNU tar would also refuse ../ and leading /.
names=$(tar --list --file="$bundle" 2>&1) || fail "$bundle is not a complete tar archive (truncated?): $names"
allowed='^(SHA256SUMS|mariadb-[0-9]{8}T[0-9]{6}Z\.mbstream\.gz|postal\.yml|signing\.key|postal-gateway\.version)$'
while read -r name; do
  [[ $name =~ $allowed ]] || fail "$bundle holds $name, which no postal-gateway backup holds"
done <<<"$names"
db=$(sed -n '/^mariadb-/p' <<<"$names")
[[ -n $db && $(wc -l <<<"$db") == 1 ]] || fail "$bundle holds no MariaDB backup (or several)"

mkdir -p "$root$data"
work=$(mktemp -d "$root$data/.restore.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar --extract --file="$bundle" --directory="$work" --no-same-owner --no-same-permissions
[[ -f $work/SHA256SUMS ]] || fail "$bundle has no SHA256SUMS: not a postal-gateway backup"
listed=$(awk '{print $2}' "$work/SHA256SUMS" | sort)
[[ $listed == $(grep -vx SHA256SUMS <<<"$names" | sort) ]] || fail "$bundle's files are not the ones SHA256SUMS lists"
checked=$(cd "$work" && sha256sum --check --strict SHA256SUMS 2>&1) || fail "$bundle is corrupt: $checked"

current=$root$data/config/postal-gateway.version
if [[ -f $work/postal-gateway.version && -f $current ]]; then
  theirs=$(<"$work/postal-gateway.version") ours=$(<"$current")
  if [[ $(printf '%s\n' "$theirs" "$ours" | sort -V | tail -n 1) != "$ours" ]]; then
    fail "the backup's data was migrated by Postal $theirs, newer than this VM's $ours: set postalVersion to $theirs and pulumi up first"
  fi
fi
if [[ -e $root$backups/$db ]] && ! cmp -s "$work/$db" "$root$backups/$db"; then
  fail "$backups/$db already exists with other content"
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
kept=$data/config/restored-$stamp
mkdir -p "$root$backups" "$root$kept"
chmod 700 "$root$kept"
for file in postal.yml signing.key postal-gateway.version; do
  if [[ -f $work/$file ]]; then mv "$work/$file" "$root$kept/$file"; fi
done
if ! cmp -s "$root$kept/signing.key" "$root$data/config/signing.key"; then
  echo "postal-gateway-restore: WARNING: the backup's signing.key differs from this stack's; the backup's is in $kept" \
    "(a restore into another stack: see docs/runbook.md, Restore)" >&2
fi
mv "$work/$db" "$root$backups/$db"
"$(dirname "$0")/postal-gateway-restore-db" "$db"
echo "restored $db from $(basename "$bundle"); the backup's Postal config is in $kept"
