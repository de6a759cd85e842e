#!/usr/bin/env bash
# Throwaway TLS material and tokens for a cluster.toml: a CA, one certificate per node (naming
# it flashledger://node/<id>, valid for its address), an admin client certificate
# (flashledger://role/admin/operator), and one bearer token per role with the tokens file that
# holds their SHA-256 digests. Writes only what the config names and is missing, so running it
# again changes nothing; delete the files to start over. For a real deployment use your own CA
# and keep its key offline (docs/security.md).
#
#   scripts/certs.sh [CONFIG]        # default cluster.toml
#
# Files (next to security.ca_file unless the config says otherwise):
#   ca.pem ca.key                    the CA (ca.key signs; keep it away from the nodes)
#   <each node's cert_file/key_file>
#   admin-client.pem admin-client.key
#   tokens.toml                      digests + roles (security.tokens_file)
#   admin.token buyer-service.token reader.token   the tokens themselves (mode 600)
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-cluster.toml}"
if ! command -v openssl >/dev/null; then
  command -v apt-get >/dev/null || { echo "error: openssl is needed and there is no apt-get to install it" >&2; exit 1; }
  sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
  echo "==> installing openssl" >&2
  "${sudo[@]}" apt-get update -qq && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq openssl >/dev/null
fi

# What the config names: "insecure", or lines of "ca CA_FILE", "tokens FILE",
# "node ID HOST CERT KEY".
plan=$(python3 - "$config" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    config = tomllib.load(f)
security = config.get("security", {})
if security.get("insecure"):
    print("insecure"); sys.exit(0)
if "ca_file" not in security:
    sys.exit(f"{sys.argv[1]}: [security] names no ca_file (and is not insecure)")
print("ca", security["ca_file"])
if "tokens_file" in security:
    print("tokens", security["tokens_file"])
for node in config.get("nodes", []):
    host = node["addr"].rsplit(":", 1)[0].strip("[]")
    if "cert_file" not in node or "key_file" not in node:
        sys.exit(f"{sys.argv[1]}: node {node['id']} names no cert_file/key_file")
    print("node", node["id"], host, node["cert_file"], node["key_file"])
PY
)
if [ "$plan" = insecure ]; then
  echo "$config: security.insecure = true; no certificates needed"
  exit 0
fi

ca_file=$(awk '$1 == "ca" { print $2 }' <<<"$plan")
dir=$(dirname "$ca_file")
ca_key="${ca_file%.pem}.key"
mkdir -p "$dir"
umask 077
made=()

if [ ! -f "$ca_file" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -keyout "$ca_key" -out "$ca_file" -subj "/CN=flashledger local CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  made+=("$ca_file")
fi

# issue CERT KEY CN SAN USAGE: a leaf certificate signed by the CA.
issue() {
  local cert=$1 key=$2 cn=$3 san=$4 usage=$5 ext
  [ -f "$cert" ] && [ -f "$key" ] && return 0
  [ -f "$ca_key" ] || { echo "error: $ca_key (the CA's key) is missing; cannot issue $cert" >&2; exit 1; }
  mkdir -p "$(dirname "$cert")" "$(dirname "$key")"
  ext=$(mktemp)
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' \
    "$usage" "$san" >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$key" -subj "/CN=$cn" 2>/dev/null |
    openssl x509 -req -CA "$ca_file" -CAkey "$ca_key" -CAcreateserial -days 825 -extfile "$ext" -out "$cert" 2>/dev/null
  rm -f "$ext"
  made+=("$cert")
}

while read -r kind id host cert key; do
  [ "$kind" = node ] || continue
  if [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then name="IP:$host"; else name="DNS:$host"; fi
  issue "$cert" "$key" "flashledger node $id" "URI:flashledger://node/$id,$name" "serverAuth,clientAuth"
done <<<"$plan"
issue "$dir/admin-client.pem" "$dir/admin-client.key" "flashledger admin" \
  "URI:flashledger://role/admin/operator" "clientAuth"

tokens_file=$(awk '$1 == "tokens" { print $2 }' <<<"$plan")
if [ -n "$tokens_file" ] && [ ! -f "$tokens_file" ]; then
  {
    echo "# Bearer tokens: SHA-256 digests, never the tokens (scripts/certs.sh, docs/security.md)."
    for role in admin buyer-service reader; do
      token=$(openssl rand -hex 32)
      printf '%s' "$token" >"$dir/$role.token"
      digest=$(printf '%s' "$token" | openssl dgst -sha256 -r | cut -d' ' -f1)
      printf '\n[[tokens]]\nname = "local-%s"\nrole = "%s"\nsha256 = "%s"\n' "$role" "$role" "$digest"
    done
  } >"$tokens_file"
  made+=("$tokens_file")
fi
rm -f "${ca_file%.pem}.srl"
if [ "${#made[@]}" -gt 0 ]; then
  echo "==> made ${made[*]}"
fi
