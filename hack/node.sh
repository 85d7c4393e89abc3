#!/usr/bin/env bash
# Opt-in tier: one real Kubernetes node, so that `kubectl apply -k deploy/` runs the operator as
# real pods. Starts its own etcd, kube-apiserver, kube-controller-manager and kube-scheduler, then
# containerd + runc + CNI bridge, kubelet (node `knode`) and kube-proxy (iptables), a locally built
# pause image, the operator image imported into containerd, and a docker-registry pods can reach.
#   hack/node.sh start DIR   # waits for node Ready + ServiceAccount `default`; writes DIR/env
#   hack/node.sh stop DIR    # stops everything by its recorded PID and removes what start made
# Root only. Everything listens on loopback or on 10.200.0.1/32, an address on the empty bridge
# knode0 that this script creates; pods get 10.244.0.0/24 on the bridge kcni0, services 10.0.0.0/24.
# No masquerade, and the KNODE-ISOLATE chain drops anything forwarded between kcni0 and another
# interface, so nothing a pod sends is routed off the machine.
#
# Binaries: hack/k8s-bins.sh node (v1.36.3, all seven), etcd as hack/control-plane.sh finds it,
# Debian's containerd 1.6, runc, containernetworking-plugins, docker-registry (installed when
# missing). Settings, the errors they avoid and timings: hack/node/README.md.
#   MPO_IMAGE        image imported into containerd (default localhost/mpo-operator:dev, podman storage)
#   MPO_NODE_TIMEOUT seconds to wait for node Ready (default 120)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { printf '[node] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

NODE=knode
NODE_IP=10.200.0.1
NODE_BR=knode0
CNI_BR=kcni0
POD_CIDR=10.244.0.0/24
SVC_CIDR=10.0.0.0/24
ISOLATE=KNODE-ISOLATE
CACHE=${MPO_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/mpo-operator}
IMAGE=${MPO_IMAGE:-localhost/mpo-operator:dev}
PAUSE_IMAGE=localhost/mpo-node-pause:1
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
# Host paths the kubelet and containerd 1.6 write to whatever their configuration says; the ones
# that did not exist before `start` are removed by `stop` once empty.
HOST_PATHS=(/run/containerd /var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni/results)

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

free_port() { # free_port ADDRESS
  python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1]); s.close()' "$1"
}

# --- processes: DIR/pids holds "name pid" lines; a PID is only signalled while its command line
# still names DIR (so a recycled PID is never hit).
ours() { [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$D"; }
pid_of() { awk -v n="$1" '$1 == n { p = $2 } END { print p }' "$D/pids" 2>/dev/null; }
alive() { local p; p=$(pid_of "$1"); [ -n "$p" ] && ours "$p"; }

spawn() { # spawn NAME COMMAND... : own session, output to DIR/logs/NAME.log, PID recorded
  local name=$1; shift
  setsid "$@" >>"$D/logs/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$D/pids"
}

wait_for() { # wait_for NAME SECONDS DESCRIPTION COMMAND... : fails early if NAME's process died
  local name=$1 deadline=$(( $(date +%s) + $2 )) what=$3; shift 3
  until "$@" >/dev/null 2>&1; do
    if [ "$name" != - ] && ! alive "$name"; then
      log "$name exited while waiting for $what; last lines of $D/logs/$name.log:"
      tail -25 "$D/logs/$name.log" >&2; return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out after $2 s waiting for $what"
      [ "$name" = - ] || { log "last lines of $D/logs/$name.log:"; tail -25 "$D/logs/$name.log" >&2; }
      return 1
    fi
    sleep 0.2
  done
}

kill_recorded() { # kill_recorded NAME [SECONDS]: SIGTERM, then SIGKILL after the grace period
  local name=$1 grace=${2:-10} p
  p=$(pid_of "$name"); [ -n "$p" ] || return 0
  ours "$p" || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 1 $((grace * 10))); do ours "$p" || return 0; sleep 0.1; done
  log "$name (pid $p) still running after ${grace} s: SIGKILL"
  kill -9 "$p" 2>/dev/null || true
  for _ in $(seq 1 50); do ours "$p" || return 0; sleep 0.1; done
}

# --- binaries -------------------------------------------------------------------------------
find_bins() {
  command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] &&
    command -v docker-registry >/dev/null && command -v conntrack >/dev/null || {
    log "installing containerd runc containernetworking-plugins docker-registry iptables conntrack"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      containerd runc containernetworking-plugins docker-registry iptables conntrack >/dev/null
  }
  command -v podman >/dev/null || die "podman not found (hack/image.sh installs it)"
  command -v go >/dev/null || die "go not found (needed for the pause binary)"
  "${PODMAN[@]}" image exists "$IMAGE" || die "image $IMAGE is not in podman storage (bash hack/image.sh builds it)"
  local t=$(now)
  K8S=$("$here/k8s-bins.sh" node | tail -1)
  log "kubernetes binaries in $K8S ($(since "$t"))"
  ETCD=$CACHE/etcd/root/usr/bin/etcd
  [ -x "$ETCD" ] || ETCD=$("$here/install-deps.sh" | tail -1)/etcd
  KUBECTL=$K8S/kubectl
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$K8S/$b" ] || die "missing $K8S/$b"
  done
  [ -x "$ETCD" ] || die "missing etcd ($ETCD)"
}

# --- PKI ------------------------------------------------------------------------------------
make_pki() {
  local p=$D/pki
  mkdir -p "$p"
  # EC P-256 keys: eight RSA keys took 4-5 s on 2 busy cores. The ServiceAccount key stays RSA.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -subj /CN=mpo-node-ca \
    -keyout "$p/ca.key" -out "$p/ca.crt" 2>/dev/null
  cert "$p/apiserver" /CN=kube-apiserver serverAuth \
    "IP:127.0.0.1,IP:$NODE_IP,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert "$p/admin" /O=system:masters/CN=mpo-node-admin clientAuth
  cert "$p/apiserver-kubelet-client" /O=system:masters/CN=kube-apiserver-kubelet-client clientAuth
  cert "$p/kube-controller-manager" /CN=system:kube-controller-manager clientAuth
  cert "$p/kube-scheduler" /CN=system:kube-scheduler clientAuth
  cert "$p/kube-proxy" /CN=system:kube-proxy clientAuth
  cert "$p/kubelet" "/O=system:nodes/CN=system:node:$NODE" clientAuth
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
}

cert() { # cert BASE SUBJECT EKU [SANS]
  local base=$1 subj=$2 eku=$3 san=${4:-}
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subj" \
    -keyout "$base.key" -out "$base.csr" 2>/dev/null
  { echo "extendedKeyUsage=$eku"; [ -z "$san" ] || echo "subjectAltName=$san"; } >"$base.ext"
  openssl x509 -req -in "$base.csr" -CA "$D/pki/ca.crt" -CAkey "$D/pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$base.ext" -out "$base.crt" 2>/dev/null
  rm -f "$base.csr" "$base.ext"
}

kubeconfig() { # kubeconfig NAME: DIR/kubeconfigs/NAME with the client cert DIR/pki/NAME.*
  local name=$1 out=$D/kubeconfigs/$1
  mkdir -p "$D/kubeconfigs"
  cat >"$out" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: mpo-node
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $(base64 -w0 "$D/pki/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$D/pki/$name.crt")
    client-key-data: $(base64 -w0 "$D/pki/$name.key")
contexts:
- name: mpo-node
  context: {cluster: mpo-node, user: $name, namespace: default}
current-context: mpo-node
KCFG
  chmod 600 "$out"
}

kc() { "$KUBECTL" --kubeconfig "$D/kubeconfigs/admin" "$@"; }

# --- network --------------------------------------------------------------------------------
net_up() {
  ip link show "$NODE_BR" >/dev/null 2>&1 || ip link add "$NODE_BR" type bridge
  ip addr show dev "$NODE_BR" | grep -q "inet $NODE_IP/32" || ip addr add "$NODE_IP/32" dev "$NODE_BR"
  ip link set "$NODE_BR" up
  # Pods may talk to each other, to services and to the host; nothing is forwarded off kcni0.
  iptables -N "$ISOLATE" 2>/dev/null || iptables -F "$ISOLATE"
  iptables -A "$ISOLATE" -i "$CNI_BR" ! -o "$CNI_BR" -j DROP
  iptables -A "$ISOLATE" -o "$CNI_BR" ! -i "$CNI_BR" -j DROP
  iptables -C FORWARD -j "$ISOLATE" 2>/dev/null || iptables -I FORWARD 1 -j "$ISOLATE"
}

drop_chain() { # drop_chain iptables|ip6tables TABLE CHAIN: remove the jumps to CHAIN, then CHAIN
  local ipt=$1 t=$2 c=$3 rule
  "$ipt" -t "$t" -S "$c" >/dev/null 2>&1 || return 0
  "$ipt" -t "$t" -S | grep -E -- "-j $c( |\$)" | sed 's/^-A /-D /' | while read -r rule; do
    eval "\"$ipt\" -t $t $rule" || true
  done
  "$ipt" -t "$t" -F "$c" 2>/dev/null || true
  "$ipt" -t "$t" -X "$c" 2>/dev/null || true
}

# --- start ----------------------------------------------------------------------------------
start() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  mkdir -p "$1"; D=$(cd "$1" && pwd)
  local t0 t
  t0=$(now)
  find_bins
  if [ -f "$D/.mpo-node" ] && alive kube-apiserver && alive kubelet &&
    kc get --raw /readyz >/dev/null 2>&1; then
    log "already running; . $D/env"
    echo "$D/env"; return 0
  fi
  if [ -n "$(ls -A "$D")" ]; then
    [ -f "$D/.mpo-node" ] || die "$D is not empty and was not made by hack/node.sh"
    log "cleaning up an earlier run in $D"
    stop "$D"
  fi
  if ip link show "$NODE_BR" >/dev/null 2>&1; then
    die "bridge $NODE_BR exists: another hack/node.sh node is running (its stop removes it; a leftover: ip link del $NODE_BR)"
  fi
  mkdir -p "$D/logs" "$D/manifests" "$D/cni" "$D/images" "$D/podlogs" "$D/kubelet-plugins"
  touch "$D/.mpo-node"; : >"$D/pids"
  printf 'K8S=%q\n' "$K8S" >"$D/bins"
  local p; : >"$D/host-paths"
  for p in "${HOST_PATHS[@]}"; do [ -e "$p" ] || echo "$p" >>"$D/host-paths"; done
  for p in /sys/fs/cgroup/*/; do [ -e "${p}kubepods" ] || echo "${p}kubepods" >>"$D/host-paths"; done
  STARTED=0
  trap 'if [ "$STARTED" = 0 ]; then log "start failed; cleaning up (logs stay in $D/logs)"; stop "$D" || true; fi' EXIT

  t=$(now)
  net_up
  make_pki
  local etcd_port peer_port kcm_port sched_port kubelet_port kubelet_hz proxy_hz proxy_metrics
  etcd_port=$(free_port 127.0.0.1); peer_port=$(free_port 127.0.0.1)
  API_PORT=$(free_port $NODE_IP); REG_PORT=$(free_port $NODE_IP); kubelet_port=$(free_port $NODE_IP)
  kcm_port=$(free_port 127.0.0.1); sched_port=$(free_port 127.0.0.1)
  kubelet_hz=$(free_port 127.0.0.1); proxy_hz=$(free_port 127.0.0.1); proxy_metrics=$(free_port 127.0.0.1)
  local n; for n in admin kube-controller-manager kube-scheduler kube-proxy kubelet; do kubeconfig $n; done
  log "bridge $NODE_BR with $NODE_IP/32, isolation chain $ISOLATE, PKI and kubeconfigs ($(since "$t"))"

  t=$(now)
  spawn etcd "$ETCD" --name mpo-node --data-dir "$D/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "mpo-node=http://127.0.0.1:$peer_port" --listen-metrics-urls "" \
    --unsafe-no-fsync --log-level warn
  wait_for etcd 30 etcd curl -sf "http://127.0.0.1:$etcd_port/health"
  log "etcd on 127.0.0.1:$etcd_port ($(since "$t"))"

  t=$(now)
  spawn kube-apiserver "$K8S/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=$NODE_IP --advertise-address=$NODE_IP --secure-port="$API_PORT" \
    --tls-cert-file="$D/pki/apiserver.crt" --tls-private-key-file="$D/pki/apiserver.key" --cert-dir="$D/pki" \
    --client-ca-file="$D/pki/ca.crt" \
    --kubelet-client-certificate="$D/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$D/pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$D/pki/sa.pub" --service-account-signing-key-file="$D/pki/sa.key" \
    --service-cluster-ip-range=$SVC_CIDR --allow-privileged=true --v=1
  wait_for kube-apiserver 120 kube-apiserver curl -sf --cacert "$D/pki/ca.crt" \
    --cert "$D/pki/admin.crt" --key "$D/pki/admin.key" "https://$NODE_IP:$API_PORT/readyz"
  log "kube-apiserver on $NODE_IP:$API_PORT ($(since "$t"))"

  t=$(now)
  spawn kube-controller-manager "$K8S/kube-controller-manager" \
    --kubeconfig="$D/kubeconfigs/kube-controller-manager" \
    --authentication-kubeconfig="$D/kubeconfigs/kube-controller-manager" \
    --authorization-kubeconfig="$D/kubeconfigs/kube-controller-manager" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --leader-elect=false \
    --service-account-private-key-file="$D/pki/sa.key" --root-ca-file="$D/pki/ca.crt" \
    --use-service-account-credentials=true \
    --cluster-signing-cert-file="$D/pki/ca.crt" --cluster-signing-key-file="$D/pki/ca.key" --v=1
  spawn kube-scheduler "$K8S/kube-scheduler" \
    --kubeconfig="$D/kubeconfigs/kube-scheduler" \
    --authentication-kubeconfig="$D/kubeconfigs/kube-scheduler" \
    --authorization-kubeconfig="$D/kubeconfigs/kube-scheduler" \
    --bind-address=127.0.0.1 --secure-port="$sched_port" --leader-elect=false --v=1
  wait_for kube-controller-manager 60 kube-controller-manager curl -sfk "https://127.0.0.1:$kcm_port/healthz"
  wait_for kube-scheduler 60 kube-scheduler curl -sfk "https://127.0.0.1:$sched_port/healthz"
  log "kube-controller-manager on 127.0.0.1:$kcm_port, kube-scheduler on 127.0.0.1:$sched_port ($(since "$t"))"

  t=$(now)
  write_containerd_config
  spawn containerd containerd --config "$D/containerd/config.toml"
  wait_for containerd 30 containerd ctr -a "$D/run/containerd.sock" version
  log "containerd on $D/run/containerd.sock ($(since "$t"))"

  t=$(now)
  local pause_tar
  pause_tar=$(pause_image)
  import_image pause "$pause_tar" >/dev/null
  NODE_IMAGE=$(import_image operator "$IMAGE")
  log "imported $PAUSE_IMAGE and $NODE_IMAGE into containerd ($(since "$t"))"

  t=$(now)
  mkdir -p "$D/registry/data"
  cat >"$D/registry/config.yml" <<YAML
version: 0.1
log: {level: info}
storage:
  filesystem: {rootdirectory: $D/registry/data}
  delete: {enabled: true}
http:
  addr: $NODE_IP:$REG_PORT
YAML
  spawn registry docker-registry serve "$D/registry/config.yml"
  wait_for registry 30 "docker-registry" curl -sf "http://$NODE_IP:$REG_PORT/v2/"
  log "docker-registry on http://$NODE_IP:$REG_PORT ($(since "$t"))"

  t=$(now)
  write_node_configs "$kubelet_port" "$kubelet_hz" "$proxy_hz" "$proxy_metrics"
  spawn kubelet "$K8S/kubelet" --config="$D/kubelet.yaml" --kubeconfig="$D/kubeconfigs/kubelet" \
    --root-dir="$D/kubelet" --cert-dir="$D/pki/kubelet" --hostname-override=$NODE --node-ip=$NODE_IP --v=1
  spawn kube-proxy "$K8S/kube-proxy" --config="$D/kube-proxy.yaml" --v=1
  wait_for kubelet "${MPO_NODE_TIMEOUT:-120}" "node $NODE Ready" node_ready
  wait_for kube-proxy 30 "kube-proxy healthz" curl -sf "http://127.0.0.1:$proxy_hz/healthz"
  log "node $NODE Ready ($(since "$t"))"

  t=$(now)
  wait_for kube-controller-manager 60 "ServiceAccount default/default" kc -n default get serviceaccount default
  wait_for kube-controller-manager 60 "ConfigMap default/kube-root-ca.crt" kc -n default get configmap kube-root-ca.crt
  log "ServiceAccount default/default and kube-root-ca.crt ($(since "$t"))"

  cat >"$D/env" <<ENV
export KUBECONFIG=$D/kubeconfigs/admin
export MPO_NODE_DIR=$D
export MPO_NODE_REGISTRY=$NODE_IP:$REG_PORT
export MPO_NODE_IMAGE=$NODE_IMAGE
export PATH=$K8S:\$PATH
ENV
  STARTED=1
  log "ready in $(since "$t0"): . $D/env"
  echo "$D/env"
}

node_ready() {
  [ "$(kc get node $NODE -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

write_containerd_config() {
  mkdir -p "$D/containerd/certs.d/$NODE_IP:$REG_PORT" "$D/run"
  cat >"$D/containerd/certs.d/$NODE_IP:$REG_PORT/hosts.toml" <<TOML
server = "http://$NODE_IP:$REG_PORT"
[host."http://$NODE_IP:$REG_PORT"]
  capabilities = ["pull", "resolve"]
TOML
  cat >"$D/containerd/config.toml" <<TOML
version = 2
root = "$D/containerd/root"
state = "$D/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "$D/run/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$D/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$D/containerd/certs.d"
TOML
  cat >"$D/cni/10-node.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "knode", "plugins": [
  {"type": "bridge", "bridge": "$CNI_BR", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$D/cni-ipam",
            "ranges": [[{"subnet": "$POD_CIDR", "gateway": "10.244.0.1"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
}

write_node_configs() {
  local kubelet_port=$1 kubelet_hz=$2 proxy_hz=$3 proxy_metrics=$4
  : >"$D/resolv.conf"
  cat >"$D/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_hz
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$D/run/containerd.sock
staticPodPath: $D/manifests
podLogsDir: $D/podlogs
volumePluginDir: $D/kubelet-plugins
resolvConf: $D/resolv.conf
clusterDomain: cluster.local
clusterDNS: ["10.0.0.10"]
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}, x509: {clientCAFile: $D/pki/ca.crt}}
authorization: {mode: AlwaysAllow}
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
makeIPTablesUtilChains: false
YAML
  cat >"$D/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $D/kubeconfigs/kube-proxy}
hostnameOverride: $NODE
mode: iptables
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$proxy_hz
metricsBindAddress: 127.0.0.1:$proxy_metrics
clusterCIDR: $POD_CIDR
nodePortAddresses: ["$NODE_IP/32"]
conntrack: {maxPerCore: 0, min: 0}
iptables: {localhostNodePorts: false}
YAML
}

pause_image() { # builds the static pause binary and its FROM-scratch image once; prints the tar
  local dir=$CACHE/node/pause
  if ! "${PODMAN[@]}" image exists "$PAUSE_IMAGE" || [ ! -s "$dir/pause.tar" ]; then
    log "building $PAUSE_IMAGE (static Go pause binary, FROM scratch)"
    rm -rf "$dir" && mkdir -p "$dir"
    cp "$here/node/pause.go" "$dir/"
    printf 'module mpo-operator.local/pause\n\ngo 1.22\n' >"$dir/go.mod"
    (cd "$dir" && GOTOOLCHAIN=local GOWORK=off CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o pause .)
    printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$dir/Containerfile"
    "${PODMAN[@]}" build -q -f "$dir/Containerfile" -t "$PAUSE_IMAGE" "$dir" >/dev/null
    "${PODMAN[@]}" save -q --format docker-archive -o "$dir/pause.tar" "$PAUSE_IMAGE"
  fi
  echo "$dir/pause.tar"
}

import_image() { # import_image NAME IMAGE-or-TAR: into containerd's k8s.io namespace; prints its name
  local name=$1 src=$2 tar=$D/images/$1.tar out
  if [ -f "$src" ]; then tar=$src; else
    "${PODMAN[@]}" image exists "$src" || die "image $src is not in podman storage (bash hack/image.sh builds it)"
    "${PODMAN[@]}" save -q --format docker-archive -o "$tar" "$src"
  fi
  out=$(ctr -a "$D/run/containerd.sock" -n k8s.io images import "$tar" 2>&1) || { log "$out"; return 1; }
  sed -n 's/^unpacking \(.*\) (sha256:.*/\1/p' <<<"$out" | sed -n 1p
}

# --- stop -----------------------------------------------------------------------------------
stop() {
  [ "$(id -u)" -eq 0 ] || die "run as root"
  [ -d "$1" ] || return 0
  D=$(cd "$1" && pwd)
  [ -f "$D/.mpo-node" ] || die "$D was not made by hack/node.sh"
  local t0 t
  t0=$(now)
  if [ -z "${K8S:-}" ]; then
    K8S=$CACHE/k8s/v${MPO_K8S_VERSION:-1.36.3}
    [ ! -f "$D/bins" ] || . "$D/bins"
  fi
  KUBECTL=$K8S/kubectl

  # Nothing may recreate or reschedule pods; then the kubelet stops them through CRI (CNI DEL).
  kill_recorded kube-controller-manager; kill_recorded kube-scheduler
  if alive kubelet && alive kube-apiserver && kc get --raw /readyz >/dev/null 2>&1; then
    t=$(now)
    kc delete pods --all-namespaces --all --grace-period=1 --wait=true --timeout=90s >/dev/null 2>&1 ||
      log "some pods were not deleted within 90 s; containerd's tasks are killed below"
    log "pods deleted ($(since "$t"))"
  fi
  t=$(now)
  kill_recorded kubelet; kill_recorded kube-proxy
  [ ! -x "$K8S/kube-proxy" ] || "$K8S/kube-proxy" --cleanup >>"$D/logs/kube-proxy-cleanup.log" 2>&1 || true
  local sock=$D/run/containerd.sock id
  if alive containerd; then
    for id in $(ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$sock" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
      ctr -a "$sock" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
    done
  fi
  kill_recorded containerd
  # Shims and container processes outlive containerd: their PIDs are recorded in its state dir.
  local f p
  for f in $(find "$D/containerd/state" -name shim.pid -o -name init.pid 2>/dev/null); do
    p=$(cat "$f" 2>/dev/null) || continue
    if [ -n "$p" ] && [ -d "/proc/$p" ]; then kill -9 "$p" 2>/dev/null || true; fi
  done
  kill_recorded registry; kill_recorded kube-apiserver; kill_recorded etcd
  : >"$D/pids"
  log "processes stopped ($(since "$t"))"

  t=$(now)
  # What CNI DEL would have removed had the kubelet stopped the sandboxes itself (it had no
  # chance if it was dead): the veths on kcni0 (their netns can linger for a minute while
  # orphaned TCP sockets time out) and libcni's result cache for our sandbox IDs.
  local v sb
  for v in $(ip -o link show master "$CNI_BR" 2>/dev/null | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }'); do
    ip link del "$v" 2>/dev/null || true
  done
  for sb in "$D"/containerd/root/io.containerd.grpc.v1.cri/sandboxes/*/; do
    [ -d "$sb" ] || continue
    sb=$(basename "$sb"); rm -f /var/lib/cni/results/*-"$sb"-*
  done
  find /var/log/containers -maxdepth 1 -type l -lname "$D/*" -delete 2>/dev/null || true
  unmount_all
  ip link del "$CNI_BR" 2>/dev/null || true
  ip link del "$NODE_BR" 2>/dev/null || true
  local ipt c t_
  for ipt in iptables ip6tables; do
    for c in KUBE-FIREWALL KUBE-KUBELET-CANARY; do
      for t_ in filter nat mangle; do drop_chain $ipt $t_ $c; done
    done
  done
  drop_chain iptables filter "$ISOLATE"
  local left
  left=$( { iptables-save; ip6tables-save; } 2>/dev/null | grep -E '^:(KUBE-|CNI-HOSTPORT|CNI-DN)' | cut -d' ' -f1 | sort -u | tr '\n' ' ' || true)
  [ -z "$left" ] || log "warning: iptables chains left: $left"
  # Host paths the kubelet/containerd created: remove them when nothing else lives there.
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/cni/results/knode-*
  if [ -f "$D/host-paths" ]; then
    while read -r p; do
      [ -e "$p" ] || continue
      case "$p" in
        /sys/fs/cgroup/*) find "$p" -depth -type d -exec rmdir {} + 2>/dev/null || true ;;
        *) find "$p" -depth -type d -empty -delete 2>/dev/null || true ;;
      esac
      [ ! -e "$p" ] || log "warning: $p is not empty; left in place"
    done <"$D/host-paths"
  fi
  # State goes; logs, configs and PKI stay for a post-mortem.
  local s
  for s in containerd kubelet etcd cni-ipam registry images run podlogs kubelet-plugins; do
    rm -rf --one-file-system "${D:?}/$s"
  done
  rm -f "$D/env"
  log "mounts, bridges, iptables chains, state removed ($(since "$t")); stopped in $(since "$t0")"
}

unmount_all() { # every mount at or under DIR, deepest first
  local m pass p
  for pass in 1 2 3 4 5; do
    mapfile -t m < <(awk -v d="$D" '{ p = $5; gsub(/\\040/, " ", p); if (p == d || index(p, d "/") == 1) print p }' \
      /proc/self/mountinfo | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)
    [ "${#m[@]}" -gt 0 ] || return 0
    for p in "${m[@]}"; do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true; done
  done
  log "warning: mounts left under $D: $(awk -v d="$D" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | tr '\n' ' ')"
}

case "${1:-}" in
  start) start "${2:?DIR}" ;;
  stop) stop "${2:?DIR}" ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
