#!/usr/bin/env bash
# The local demo: a control plane and a registry on loopback, example modules `echo` and
# `hello-world`, the CRDs and examples applied, the operator running, and `kubectl get ms,mop`
# showing the digest. Stays up until Ctrl-C, then stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

say "installing system packages and building kube-apiserver/kubectl if needed (first run: ~6 min)"
bash hack/install-deps.sh >/dev/null
bash hack/k8s-bins.sh >/dev/null
say "building the operator and the module pusher (examples/push-module.rs)"
cargo build --locked --release --bin mpo-operator --example push-module
push=$root/target/release/examples/push-module

demo=$root/.mpo/demo
rm -rf "$demo" && mkdir -p "$demo"
pids=()
cleanup() {
  say "stopping the demo"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  bash hack/control-plane.sh stop "$demo/cp" || true
}
trap cleanup EXIT

say "starting kube-apiserver + etcd"
bash hack/control-plane.sh start "$demo/cp" >/dev/null
. "$demo/cp/env"

say "starting a registry on loopback"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$demo/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $demo/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port, secret: demo}
YML
docker-registry serve "$demo/registry.yml" >"$demo/registry.log" 2>&1 &
pids+=($!)
until curl -sf "http://127.0.0.1:$port/v2/" >/dev/null; do sleep 0.2; done
repo=127.0.0.1:$port/deckhouse/modules

say "pushing example modules echo and hello-world"
make_module() { # DIR NAME WEIGHT MARKER
  mkdir -p "$1/openapi" "$1/templates"
  printf 'name: %s\nweight: %s\n' "$2" "$3" > "$1/module.yaml"
  printf 'type: object\nproperties:\n  replicas: {type: integer, default: 1}\n' > "$1/openapi/config-values.yaml"
  printf 'x-extend: {schema: config-values.yaml}\ntype: object\n' > "$1/openapi/values.yaml"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s}\ndata: {marker: "%s"}\n' "$2" "$4" > "$1/templates/configmap.yaml"
  printf '{"%s": "sha256:%064d"}\n' "$2" 0 > "$1/images_digests.json"
  printf '{"version": "%s"}\n' "$4" > "$1/version.json"
}
for m in echo hello-world; do
  make_module "$demo/src/$m" "$m" 910 "v0.0.1-$m"
  "$push" "$demo/src/$m" "http://127.0.0.1:$port" "deckhouse/modules/$m" main-patch-03354 >/dev/null
  # The root repository's tags are the module names.
  "$push" "$demo/src/$m" "http://127.0.0.1:$port" deckhouse/modules "$m" >/dev/null
done

say "applying crds/ and examples/ (the source pointed at the local registry)"
kubectl apply --server-side -k crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
sed -e "s#repo: registry.example.com/deckhouse/modules#repo: $repo#" -e 's#scheme: HTTPS#scheme: HTTP#' \
  examples/module-source.yaml | kubectl apply -f -
kubectl apply -f examples/module-pull-override.yaml

say "starting the operator (log: $demo/operator.log)"
./target/release/mpo-operator run --download-dir "$demo/downloaded" --metrics-addr 127.0.0.1:0 \
  >"$demo/operator.log" 2>&1 &
pids+=($!)
kubectl wait --for=condition=Ready mop/echo --timeout=120s >/dev/null
kubectl get ms,mop
echo
ls -l "$demo/downloaded/modules/"

cat <<TXT

The operator is running. In another terminal:
  export KUBECONFIG=$KUBECONFIG PATH=$(dirname "$MPO_TEST_KUBECTL"):\$PATH
  kubectl get mop echo -o yaml
  echo '{"version": "v0.0.2"}' > $demo/src/echo/version.json       # change the module
  $push $demo/src/echo http://127.0.0.1:$port deckhouse/modules/echo main-patch-03354
  kubectl annotate mop echo renew=""        # picks up the new digest at once
  ls -l $demo/downloaded/echo/
Ctrl-C here stops the operator, the registry and the control plane.
TXT
wait "${pids[@]}"
