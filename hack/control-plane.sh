#!/usr/bin/env bash
# Starts etcd + kube-apiserver on loopback ports picked at run time, as controller-runtime's envtest
# does, and writes a kubeconfig. Usage:
#   hack/control-plane.sh start DIR   # prints the kubeconfig path; DIR/pids lists the processes
#   hack/control-plane.sh stop DIR    # stops exactly those processes
#   hack/control-plane.sh restart-apiserver DIR   # the apiserver down and up again (chaos soak)
# Binaries: $KUBEBUILDER_ASSETS (kube-apiserver, etcd, kubectl) if set, else the cached builds of
# hack/k8s-bins.sh and hack/install-deps.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { printf '[control-plane] %s\n' "$*" >&2; }

find_bins() {
  if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
    APISERVER=$KUBEBUILDER_ASSETS/kube-apiserver ETCD=$KUBEBUILDER_ASSETS/etcd KUBECTL=$KUBEBUILDER_ASSETS/kubectl
  else
    local k8s etcd_dir
    k8s=$("$here/k8s-bins.sh" | tail -1)
    etcd_dir=${MPO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mpo-operator}/etcd/root/usr/bin
    [ -x "$etcd_dir/etcd" ] || etcd_dir=$("$here/install-deps.sh" | tail -1)
    APISERVER=$k8s/kube-apiserver ETCD=$etcd_dir/etcd KUBECTL=$k8s/kubectl
  fi
  for b in "$APISERVER" "$ETCD" "$KUBECTL"; do [ -x "$b" ] || { log "missing binary $b"; exit 1; }; done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

make_pki() {
  local p=$1
  mkdir -p "$p" && cd "$p"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=mpo-test-ca -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' > san.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile san.ext -out apiserver.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  cd - >/dev/null
}

wait_until() { # wait_until SECONDS DESCRIPTION COMMAND...
  local deadline=$(( $(date +%s) + $1 )) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then log "timed out waiting for $what"; return 1; fi
    sleep 0.2
  done
}

# Starts etcd on two fresh loopback ports and sets etcd_port. Returns non-zero, after saying why
# (etcd's own error line, not only the stack trace that follows it, and the free disk space, since
# the WAL is preallocated: 64 MiB), when it does not answer /health within 30 s.
start_etcd() {
  local d=$1 peer_port pid
  etcd_port=$(free_port); peer_port=$(free_port)
  [ "$etcd_port" != "$peer_port" ] || peer_port=$(free_port)
  rm -rf "$d/etcd"
  log "starting etcd on 127.0.0.1:$etcd_port"
  "$ETCD" --name mpo-test --data-dir "$d/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "mpo-test=http://127.0.0.1:$peer_port" \
    --unsafe-no-fsync --log-level warn >"$d/etcd.log" 2>&1 &
  pid=$!
  echo "$pid" >> "$d/pids"
  local deadline=$(( $(date +%s) + 30 ))
  while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
    curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
  log "etcd did not answer on 127.0.0.1:$etcd_port; its errors:"
  grep -E '"level":"(error|panic|fatal)"' "$d/etcd.log" | head -5 >&2 || tail -5 "$d/etcd.log" >&2
  log "free space where its data goes: $(df -h --output=avail "$d" | tail -1 | tr -d ' ')"
  return 1
}

start() {
  local d=$1
  find_bins
  mkdir -p "$d" && d=$(cd "$d" && pwd)
  : > "$d/pids"
  make_pki "$d/pki"
  local token etcd_port peer_port api_port
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  printf '%s,mpo-test-admin,mpo-test-admin,system:masters\n' "$token" > "$d/tokens.csv"
  api_port=$(free_port)
  start_etcd "$d" || start_etcd "$d" || exit 1

  # Audit: who wrote the operator's objects and leases, and when (tests/deploy.rs reads it to show
  # that a fenced leader wrote nothing after it was cut off). Metadata only, writes only.
  cat > "$d/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete]
  resources:
  - group: deckhouse.io
  - group: coordination.k8s.io
- level: None
POLICY
  # The apiserver's command line goes into a script of its own so that `restart-apiserver`
  # (the chaos soak) starts it again exactly so.
  cat > "$d/apiserver.sh" <<SCRIPT
#!/usr/bin/env bash
exec "$APISERVER" \\
  --audit-policy-file="$d/audit-policy.yaml" --audit-log-path="$d/audit.log" --audit-log-format=json \\
  --etcd-servers="http://127.0.0.1:$etcd_port" \\
  --bind-address=127.0.0.1 --secure-port="$api_port" \\
  --advertise-address=127.0.0.1 --endpoint-reconciler-type=none \\
  --tls-cert-file="$d/pki/apiserver.crt" --tls-private-key-file="$d/pki/apiserver.key" --cert-dir="$d/pki" \\
  --client-ca-file="$d/pki/ca.crt" \\
  --token-auth-file="$d/tokens.csv" \\
  --authorization-mode=RBAC \\
  --service-account-issuer="https://127.0.0.1:$api_port" \\
  --service-account-key-file="$d/pki/sa.key" --service-account-signing-key-file="$d/pki/sa.key" \\
  --service-cluster-ip-range=10.0.0.0/24 \\
  --disable-admission-plugins=ServiceAccount --allow-privileged=true \\
  --v=1
SCRIPT
  printf '%s %s\n' "$api_port" "$token" > "$d/apiserver.access"
  launch_apiserver "$d"
  write_kubeconfig "$d" "$api_port" "$token"
  cat > "$d/env" <<ENV
export KUBECONFIG=$d/kubeconfig
export MPO_TEST_KUBECONFIG=$d/kubeconfig
export MPO_TEST_KUBECTL=$KUBECTL
export MPO_TEST_CONTROL_PLANE=$d
export MPO_TEST_AUDIT_LOG=$d/audit.log
export PATH=$(dirname "$KUBECTL"):\$PATH
ENV
  log "ready: KUBECONFIG=$d/kubeconfig"
  echo "$d/kubeconfig"
}

launch_apiserver() {
  local d=$1 api_port token
  read -r api_port token < "$d/apiserver.access"
  log "starting kube-apiserver on 127.0.0.1:$api_port"
  bash "$d/apiserver.sh" >>"$d/kube-apiserver.log" 2>&1 &
  echo $! >> "$d/pids"
  # Authenticated: anonymous /readyz is refused until the RBAC bootstrap roles exist.
  wait_until 120 kube-apiserver curl -sf --cacert "$d/pki/ca.crt" -H "Authorization: Bearer $token" \
    "https://127.0.0.1:$api_port/readyz" || { tail -30 "$d/kube-apiserver.log" >&2; exit 1; }
}

# Stops the apiserver (SIGTERM, as a rolling control-plane upgrade does) and starts it again on the
# same port with the same flags; etcd keeps running.
restart_apiserver() {
  local d=$1 pid
  d=$(cd "$d" && pwd)
  pid=$(tail -1 "$d/pids")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  sed -i '$d' "$d/pids"
  launch_apiserver "$d"
}

write_kubeconfig() {
  local d=$1 port=$2 token=$3
  cat > "$d/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: mpo-test
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(base64 -w0 "$d/pki/ca.crt")
users:
- name: mpo-test-admin
  user:
    token: $token
contexts:
- name: mpo-test
  context: {cluster: mpo-test, user: mpo-test-admin, namespace: default}
current-context: mpo-test
KCFG
  chmod 600 "$d/kubeconfig"
}

stop() {
  local d=$1 pid
  [ -f "$d/pids" ] || return 0
  # apiserver first (reverse order), each by its own recorded PID.
  for pid in $(tac "$d/pids"); do kill "$pid" 2>/dev/null || true; done
  for pid in $(tac "$d/pids"); do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  : > "$d/pids"
}

case "${1:-}" in
  start) start "${2:?DIR}" ;;
  restart-apiserver) restart_apiserver "${2:?DIR}" ;;
  stop) stop "${2:?DIR}" ;;
  *) echo "usage: $0 start|stop|restart-apiserver DIR" >&2; exit 2 ;;
esac
