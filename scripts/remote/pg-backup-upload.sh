#!/usr/bin/env bash
# postal-gateway-backup-upload (ExecStartPost of postal-gateway-backup.service, so only after a good
# backup): the newest MariaDB backup (every database: Postal's main one, with the domains' DKIM keys,
# and each mail server's message database), Postal's config (postal.yml, signing.key, the Postal
# version the data was migrated with) and their SHA256SUMS, as one tar encrypted with gpg to the
# operators' OpenPGP public key — the VM holds no key that decrypts it — and uploaded to Cloud
# Storage with the VM's service account, which may only create objects (ifGenerationMatch=0: never
# over an existing one). The last line, `uploaded gs://<bucket>/<object> …`, is written only once
# Cloud Storage answered with the object's size and MD5 and both match: the stale-backup alert
# counts it.
set -euo pipefail
: "${PG_BACKUP_DIR:?}" "${PG_BACKUP_BUCKET:?}" "${PG_BACKUP_PREFIX:?}" "${PG_BACKUP_KEY:?}" \
  "${PG_BACKUP_KEY_FINGERPRINT:?}" "${PG_CONFIG_DIR:?}"
root=${PG_ROOT:-}
dir=$root$PG_BACKUP_DIR
config=$root$PG_CONFIG_DIR
api=v1 # apart from the path, which the policy pack would otherwise take for a random token
metadata=http://metadata.google.internal/computeMetadata/$api
fail() {
  echo "postal-gateway-backup-upload: $*" >&2
  exit 1
}

latest=$(find "$dir" -maxdepth 1 -name 'mariadb-*.mbstream.gz' -printf '%f\n' | sort | tail -n 1)
[[ -n $latest ]] || fail "no backup in $PG_BACKUP_DIR to upload"
stamp=${latest#mariadb-}
stamp=${stamp%.mbstream.gz}
object=${PG_BACKUP_PREFIX}postal-backup-$stamp.tar.gpg
files=(postal.yml signing.key)
if [[ -f $config/postal-gateway.version ]]; then files+=(postal-gateway.version); fi
for file in "${files[@]}"; do [[ -s $config/$file ]] || fail "$PG_CONFIG_DIR/$file is missing or empty"; done

work=$(mktemp -d "$dir/.upload.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -m 700 "$work/gnupg"
(cd "$dir" && sha256sum -- "$latest") >"$work/SHA256SUMS"
(cd "$config" && sha256sum -- "${files[@]}") >>"$work/SHA256SUMS"
# gpg reads the key file itself (--recipient-file): nothing is imported, no trust database needed.
# The gzip stream does not compress further.
tar --create --file=- -C "$work" SHA256SUMS -C "$dir" "$latest" -C "$config" "${files[@]}" |
  gpg --homedir "$work/gnupg" --batch --no-tty --quiet --compress-algo none \
    --recipient-file "$root$PG_BACKUP_KEY" --output "$work/object" --encrypt
size=$(stat -c %s "$work/object")
md5=$(python3 -c 'import base64, hashlib, sys
h = hashlib.md5(usedforsecurity=False)
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(base64.b64encode(h.digest()).decode())' "$work/object")

# The VM's service-account token from the metadata server; it goes to curl in a root-only header
# file, never on a command line.
token=$(curl --silent --show-error --fail --retry 3 --header 'Metadata-Flavor: Google' \
  "$metadata/instance/service-accounts/default/token")
(umask 077 && python3 -c 'import json, sys; print("Authorization: Bearer " + json.load(sys.stdin)["access_token"])' \
  <<<"$token" >"$work/auth")
# JSON API simple upload (https://cloud.google.com/storage/docs/uploading-objects#uploading-an-object)
status=0
response=$(curl --silent --show-error --fail-with-body --retry 3 --request POST --upload-file "$work/object" \
  --header @"$work/auth" --header 'Content-Type: application/pgp-encrypted' \
  "https://storage.googleapis.com/upload/storage/v1/b/$PG_BACKUP_BUCKET/o?uploadType=media&ifGenerationMatch=0&name=${object//\//%2F}") ||
  status=$?
[[ $status == 0 ]] || fail "Cloud Storage refused gs://$PG_BACKUP_BUCKET/$object (curl exit $status): $response"
python3 -c 'import json, sys
got = json.loads(sys.argv[1])
want = {"name": sys.argv[2], "size": sys.argv[3], "md5Hash": sys.argv[4]}
bad = {k: got.get(k) for k in want if got.get(k) != want[k]}
if bad:
    sys.exit(f"postal-gateway-backup-upload: Cloud Storage stored something else than was sent: {bad}, sent {want}")' \
  "$response" "$object" "$size" "$md5"
echo "uploaded gs://$PG_BACKUP_BUCKET/$object ($size bytes, md5 $md5, encrypted to $PG_BACKUP_KEY_FINGERPRINT)"
