#!/usr/bin/env bash
# Create the secret files deploy/compose.yaml reads, in deploy/secrets/ (or $1), without
# overwriting any that exist. Needs openssl. Run it once on the deployment box:
#   deploy/make_secrets.sh            # then edit secrets/api_keys: one tenant:key line per carrier
#
# Files are mode 0444 inside a 0700 folder: only the owner can reach them on the host, and each
# container can read its bind-mounted copy whatever uid it runs as (portrait runs as 10001,
# grafana as 472).
set -euo pipefail
dir=${1:-$(dirname "$0")/secrets}
mkdir -p "$dir"
chmod 0700 "$dir"
umask 0077

random() { openssl rand -base64 "$1" | tr -d '\n/+=' | cut -c1-"$2"; }
make() {  # NAME COMMAND... : run COMMAND into NAME unless NAME exists
  local name=$1; shift
  if [ -e "$dir/$name" ]; then echo "kept    $dir/$name"; return; fi
  "$@" >"$dir/$name.tmp"
  mv "$dir/$name.tmp" "$dir/$name"
  chmod 0444 "$dir/$name"
  echo "created $dir/$name"
}

make challenge_secret random 64 48
make receipt_ed25519.pem openssl genpkey -algorithm ed25519
make api_keys sh -c "printf '# tenant:key, one line per carrier system; keys of 16+ printable characters\n'; \
  printf 'carrier-a:%s\n' '$(random 48 40)'"
if [ ! -e "$dir/redis_password" ]; then rm -f "$dir/redis_url"; fi  # keep the two in step
make redis_password random 48 40
make redis_url sh -c "printf 'redis://:%s@redis:6379/0' \"\$(cat '$dir/redis_password')\""
make grafana_admin_password random 36 24
echo "public key for checking receipts:"
openssl pkey -in "$dir/receipt_ed25519.pem" -pubout
