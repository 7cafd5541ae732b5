#!/usr/bin/env bash
# A real Kubernetes control plane for tests: etcd, kube-apiserver and
# kube-controller-manager built from their Go modules, on 127.0.0.1 only.
# There is no kubelet: Pods stay Pending, and tests play the kubelet's part.
#
#   k8s.sh build   build and cache the binaries (idempotent; ~5 min cold)
#   k8s.sh start   generate certificates, start etcd, kube-apiserver and
#                  kube-controller-manager, wait for /readyz, write a kubeconfig
#   k8s.sh stop    stop all three
#   k8s.sh wipe    stop and delete the cluster's data
#   k8s.sh stop-apiserver | stop-etcd
#                  stop one component (chaos tests); `start` starts it again
#                  with the same ports and data
#
# kube-controller-manager runs the garbage collector (owner references) and
# the namespace controller (namespace deletion finishes). The Deployment
# controller is left out on purpose: tests play the kubelet by writing a
# Deployment's status, which that controller would overwrite.
# VIGIL_K8S_CONTROLLER_MANAGER=0 skips it.
#
# Node mode (VIGIL_NODE_IP set, by node.sh): the API server listens on and
# advertises the node IP (pods reach it through the `kubernetes` Service),
# authorises kubelets (Node,RBAC, NodeRestriction) and reaches them by
# InternalIP; the controller manager runs every controller, with the hostPath
# provisioner. A control plane running in the other mode is restarted (its
# data is kept).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BIN="$VIGIL_CACHE/bin"
APISERVER="$BIN/kube-apiserver-$KUBERNETES_VERSION"
CONTROLLER_MANAGER="$BIN/kube-controller-manager-$KUBERNETES_VERSION"
ETCD="$BIN/etcd-$ETCD_VERSION"
DIR="$VIGIL_STATE/k8s"
PKI="$DIR/pki"
export GOFLAGS="${GOFLAGS:--mod=mod}"

build() {
  command -v go >/dev/null || die "go is needed to build kube-apiserver and etcd"
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitTreeState=clean"
  local cmd
  for cmd in kube-apiserver kube-controller-manager; do
    local out="$BIN/$cmd-$KUBERNETES_VERSION"
    if [[ ! -x $out ]]; then
      log "building $cmd $KUBERNETES_VERSION from k8s.io/kubernetes (first time only)"
      (cd "$E2E_DIR/tools/kube" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "k8s.io/kubernetes/cmd/$cmd") \
        && mv "$out.tmp" "$out"
    fi
  done
  if [[ ! -x $ETCD ]]; then
    log "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3 (first time only)"
    (cd "$E2E_DIR/tools/etcd" && go build -trimpath -ldflags "-s -w" -o "$ETCD.tmp" .) && mv "$ETCD.tmp" "$ETCD"
  fi
}

# Names the API server's certificate holds: loopback for host clients, the
# node IP and the `kubernetes` Service for pods (node mode).
APISERVER_EXT='subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,DNS:kubernetes.default,DNS:kubernetes,IP:10.0.0.1,IP:10.250.0.1\nextendedKeyUsage=serverAuth\n'

# sign_client NAME SUBJECT: a client certificate NAME.{crt,key} signed by
# the harness CA (once).
sign_client() {
  [[ -f $PKI/$1.crt ]] && return
  (cd "$PKI" && openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null \
    && printf 'extendedKeyUsage=clientAuth\n' > client.ext \
    && openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out "$1.crt" 2>/dev/null)
}

# Certificates: a CA, the apiserver's serving certificate, an admin client
# certificate (group system:masters), and the service-account signing key.
# Generated once per state dir.
certs() {
  if [[ -f $PKI/admin.crt ]]; then
    # State from before node mode: the serving certificate lacks the node IP.
    if ! openssl x509 -in "$PKI/apiserver.crt" -noout -text | grep -q 'IP Address:10.250.0.1'; then
      log "re-issuing the API server's certificate for the node IP"
      (cd "$PKI" && printf "$APISERVER_EXT" > apiserver.ext \
        && openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
          -extfile apiserver.ext -out apiserver.crt 2>/dev/null)
      stop_pid "$DIR/controller-manager.pid" kube-controller-manager
      stop_pid "$DIR/apiserver.pid" kube-apiserver
    fi
    return
  fi
  mkdir -p "$PKI"
  (
    cd "$PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=vigil-e2e-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf "$APISERVER_EXT" > apiserver.ext
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  )
  sign_client admin "/O=system:masters/CN=vigil-e2e-admin"
}

kubeconfig() {
  local host=$1 port=$2 out=$3 cert=$4 key=$5 user=$6
  cat > "$out" <<KC
apiVersion: v1
kind: Config
clusters:
- name: vigil-e2e
  cluster:
    server: https://$host:$port
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 < "$cert")
    client-key-data: $(base64 -w0 < "$key")
contexts:
- name: vigil-e2e
  context: {cluster: vigil-e2e, user: $user}
current-context: vigil-e2e
KC
}

# client NAME SUBJECT USER OUT: a kubeconfig for another client of the
# running API server (the node's kubelet, scheduler, kube-proxy), with a
# certificate of its own.
client() {
  sign_client "$1" "$2"
  local server; server=$(sed -n 's#^ *server: https://##p' "$DIR/kubeconfig")
  kubeconfig "${server%:*}" "${server##*:}" "$4" "$PKI/$1.crt" "$PKI/$1.key" "$3"
}

# The mode asked for: node when VIGIL_NODE_IP is set, or when a node runs
# on this control plane already (a plain `e2e/up` must not take it away).
wanted_mode() {
  if [[ -n ${VIGIL_NODE_IP:-} ]]; then echo node
  elif [[ $(cat "$DIR/mode" 2>/dev/null) == node ]] && pid_alive "$VIGIL_STATE/node/kubelet.pid"; then echo node
  else echo plain; fi
}

start() {
  build
  certs
  mkdir -p "$DIR/logs"
  local mode node_ip="${VIGIL_NODE_IP:-10.250.0.1}"
  mode=$(wanted_mode)
  if [[ $(cat "$DIR/mode" 2>/dev/null || echo plain) != "$mode" ]]; then
    log "restarting the control plane in $mode mode"
    stop_pid "$DIR/controller-manager.pid" kube-controller-manager
    stop_pid "$DIR/apiserver.pid" kube-apiserver
  fi
  local bind=127.0.0.1
  local -a mode_flags=(--authorization-mode=RBAC --endpoint-reconciler-type=none)
  # Plain mode: no node, so no Deployment or ReplicaSet controllers (tests
  # write a Deployment's status themselves); the Job controller runs, and
  # tests play the kubelet for the pods it makes.
  local -a kcm_flags=(--controllers=garbagecollector,namespace,serviceaccount,job)
  if [[ $mode == node ]]; then
    bind=$node_ip
    mode_flags=(--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction
      --kubelet-client-certificate="$PKI/admin.crt" --kubelet-client-key="$PKI/admin.key"
      --kubelet-preferred-address-types=InternalIP --endpoint-reconciler-type=lease)
    kcm_flags=("--controllers=*" --enable-hostpath-provisioner --flex-volume-plugin-dir="$DIR/flexvolume")
  fi
  local etcd_port etcd_peer api_port
  etcd_port=$(cat "$DIR/etcd-port" 2>/dev/null || free_port)
  etcd_peer=$(cat "$DIR/etcd-peer-port" 2>/dev/null || free_port)
  api_port=$(cat "$DIR/api-port" 2>/dev/null || echo "${VIGIL_K8S_PORT:-$(free_port)}")
  echo "$etcd_port" > "$DIR/etcd-port"; echo "$etcd_peer" > "$DIR/etcd-peer-port"; echo "$api_port" > "$DIR/api-port"

  if ! pid_alive "$DIR/etcd.pid"; then
    log "starting etcd $ETCD_VERSION on 127.0.0.1:$etcd_port"
    # --unsafe-no-fsync: test data only; fsync dominates latency on shared disks.
    nohup "$ETCD" --name vigil-e2e --data-dir "$DIR/etcd" \
      --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
      --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
      --initial-cluster "vigil-e2e=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync \
      --quota-backend-bytes=4294967296 --log-level=warn \
      > "$DIR/logs/etcd.log" 2>&1 < /dev/null &
    echo $! > "$DIR/etcd.pid"
    wait_for 60 etcd curl -sf "http://127.0.0.1:$etcd_port/health" \
      || { tail -n 20 "$DIR/logs/etcd.log" >&2; die "etcd did not start (logs: $DIR/logs/etcd.log)"; }
  fi

  if ! pid_alive "$DIR/apiserver.pid"; then
    log "starting kube-apiserver $KUBERNETES_VERSION on https://$bind:$api_port ($mode mode)"
    echo "$mode" > "$DIR/mode"
    nohup "$APISERVER" \
      --etcd-servers="http://127.0.0.1:$etcd_port" \
      --bind-address="$bind" --advertise-address="$bind" --secure-port="$api_port" \
      --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
      --client-ca-file="$PKI/ca.crt" \
      --service-account-issuer=https://kubernetes.default.svc \
      --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
      --service-cluster-ip-range=10.0.0.0/16 \
      "${mode_flags[@]}" --allow-privileged=true \
      --cert-dir="$DIR/cert-dir" \
      --enable-priority-and-fairness=false \
      > "$DIR/logs/apiserver.log" 2>&1 < /dev/null &
    echo $! > "$DIR/apiserver.pid"
  fi
  kubeconfig "$bind" "$api_port" "$DIR/kubeconfig" "$PKI/admin.crt" "$PKI/admin.key" admin
  wait_for 120 kube-apiserver apiserver_ready \
    || { tail -n 30 "$DIR/logs/apiserver.log" >&2; die "kube-apiserver did not become ready (logs: $DIR/logs/apiserver.log)"; }
  pid_alive "$DIR/apiserver.pid" \
    || { grep -E '^E|error' "$DIR/logs/apiserver.log" | tail -n 5 >&2; die "kube-apiserver exited (logs: $DIR/logs/apiserver.log)"; }

  if [[ ${VIGIL_K8S_CONTROLLER_MANAGER:-1} != 0 ]] && ! pid_alive "$DIR/controller-manager.pid"; then
    log "starting kube-controller-manager $KUBERNETES_VERSION"
    nohup "$CONTROLLER_MANAGER" \
      --kubeconfig="$DIR/kubeconfig" --authentication-kubeconfig="$DIR/kubeconfig" \
      --authorization-kubeconfig="$DIR/kubeconfig" \
      --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false \
      "${kcm_flags[@]}" \
      --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
      --use-service-account-credentials=false \
      > "$DIR/logs/controller-manager.log" 2>&1 < /dev/null &
    echo $! > "$DIR/controller-manager.pid"
  fi
  set_env VIGIL_KUBECONFIG "$DIR/kubeconfig"
}

# Ready when /readyz answers; gives up at once if the process died.
apiserver_ready() {
  pid_alive "$DIR/apiserver.pid" || { log "kube-apiserver exited"; return 0; }
  kubectl --kubeconfig "$DIR/kubeconfig" get --raw /readyz
}

stop() {
  stop_pid "$DIR/controller-manager.pid" kube-controller-manager
  stop_pid "$DIR/apiserver.pid" kube-apiserver
  stop_pid "$DIR/etcd.pid" etcd
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  stop-apiserver) stop_pid "$DIR/apiserver.pid" kube-apiserver ;;
  stop-etcd) stop_pid "$DIR/etcd.pid" etcd ;;
  wipe) stop; rm -rf "$DIR" ;;
  kubeconfig) echo "$DIR/kubeconfig" ;;
  client) shift; client "$@" ;;
  *) echo "usage: $0 build|start|stop|stop-apiserver|stop-etcd|wipe|kubeconfig|client NAME SUBJECT USER OUT" >&2; exit 2 ;;
esac
