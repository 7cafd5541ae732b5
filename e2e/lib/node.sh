#!/usr/bin/env bash
# A real node for the harness's control plane: containerd v2 (built from its
# Go module), runc and the CNI plugins (Debian), and kubelet, kube-scheduler
# and kube-proxy built from the same k8s.io/kubernetes module as the API
# server. Pods run Vigil's own images, written as OCI archives here
# (e2e/images) and imported into containerd; nothing is pulled.
#
#   node.sh build    build and cache the binaries, install runc/CNI (~15 min cold)
#   node.sh start    start the node (and the control plane and Kafka in node
#                    mode), import the images, wait for the node to be Ready
#   node.sh stop     stop the node and undo everything it changed on the host
#   node.sh images   import the images again (after e2e/images rebuilt them)
#
# Addresses: the node's IP, 10.250.0.1, is an extra address on lo (the
# kubelet refuses a loopback node IP, and this kernel has no dummy netdev).
# The API server listens on it and is advertised there, so pods reach it
# through the `kubernetes` Service (10.0.0.1:443, kube-proxy); Kafka gets a
# second listener on it, which pods use. Pods live on the bridge vigilbr0,
# 10.244.0.0/24. No cluster DNS: pods are given addresses, not names.
#
# The kubelet, the bridge plugin and kube-proxy change host settings
# (kernel.panic, panic_on_oops, ip_forward, iptables chains, a bridge, a
# network namespace per pod, cgroups, /var/log/containers...): `start`
# saves the sysctls and `stop` restores them and removes all the rest. Only
# one node can run per host; a second `start` from another state directory
# fails and says which one runs.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CONTAINERD_VERSION="v2.4.2"
NODE_NAME="vigil-node"
NODE_IP="10.250.0.1"
POD_CIDR="10.244.0.0/24"
BRIDGE="vigilbr0"
BIN="$VIGIL_CACHE/bin"
KUBELET="$BIN/kubelet-$KUBERNETES_VERSION"
SCHEDULER="$BIN/kube-scheduler-$KUBERNETES_VERSION"
PROXY="$BIN/kube-proxy-$KUBERNETES_VERSION"
CONTAINERD_DIR="$BIN/containerd-$CONTAINERD_VERSION"
PAUSE="$BIN/pause-1"
DIR="$VIGIL_STATE/node"
K8S_DIR="$VIGIL_STATE/k8s"
PKI="$K8S_DIR/pki"
OWNER=/run/vigil-node.owner
CSOCK="$DIR/containerd/containerd.sock"
PAUSE_IMAGE="registry.local/vigil/pause:1"
# Host sysctls the kubelet (setupKernelTunables), the bridge plugin and
# kube-proxy change.
SYSCTLS="vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys
  kernel/keys/root_maxbytes net/ipv4/ip_forward net/ipv4/conf/all/route_localnet net/bridge/bridge-nf-call-iptables"
export GOFLAGS="${GOFLAGS:--mod=mod}"
export PATH="$CONTAINERD_DIR:$PATH" # containerd finds its shim on PATH

ctr_() { "$CONTAINERD_DIR/ctr" --address "$CSOCK" -n k8s.io "$@"; }
kubectl_() { kubectl --kubeconfig "$K8S_DIR/kubeconfig" "$@"; }

build() {
  command -v go >/dev/null || die "go is needed to build the node"
  local missing=()
  [[ -x /usr/sbin/runc ]] || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || die "could not install ${missing[*]}"
  fi
  local minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
    -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
    -X k8s.io/component-base/version.gitTreeState=clean"
  local cmd out
  for cmd in kubelet kube-scheduler kube-proxy; do
    out="$BIN/$cmd-$KUBERNETES_VERSION"
    if [[ ! -x $out ]]; then
      log "building $cmd $KUBERNETES_VERSION from k8s.io/kubernetes (first time only)"
      (cd "$E2E_DIR/tools/kube" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp" "k8s.io/kubernetes/cmd/$cmd") \
        && mv "$out.tmp" "$out"
    fi
  done
  local p=github.com/containerd/containerd/v2 tags
  mkdir -p "$CONTAINERD_DIR"
  for cmd in containerd ctr containerd-shim-runc-v2; do
    if [[ ! -x $CONTAINERD_DIR/$cmd ]]; then
      log "building $cmd $CONTAINERD_VERSION from $p (first time only)"
      tags="no_btrfs urfave_cli_no_docs"; [[ $cmd == containerd-shim-runc-v2 ]] && tags="$tags no_grpc"
      # `go install pkg@version` builds with the module's own go.mod.
      GOFLAGS= GOBIN="$CONTAINERD_DIR" CGO_ENABLED=0 go install -trimpath -tags "$tags" \
        -ldflags "-s -w -X $p/version.Version=$CONTAINERD_VERSION" "$p/cmd/$cmd@$CONTAINERD_VERSION"
    fi
  done
  if [[ ! -x $PAUSE ]]; then
    (cd "$E2E_DIR/tools/pause" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$PAUSE.tmp" .) && mv "$PAUSE.tmp" "$PAUSE"
  fi
}

launch() { # name cmd...: start in the background unless running
  local name=$1; shift
  pid_alive "$DIR/$name.pid" && return 0
  nohup "$@" > "$DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$DIR/$name.pid"
  log "started $name"
}

claim_host() {
  if [[ -f $OWNER ]]; then
    local other; other=$(cat "$OWNER")
    if [[ $other != "$DIR" ]] && pid_alive "$other/kubelet.pid"; then
      die "a Vigil node already runs on this host (state $other); only one node can run per host: stop it with VIGIL_STATE=$(dirname "$other") e2e/down"
    fi
  fi
  echo "$DIR" > "$OWNER"
}

write_configs() {
  mkdir -p "$DIR/containerd" "$DIR/cni/net.d" "$DIR/kubelet" "$DIR/logs" "$DIR/pod-logs"
  cat > "$DIR/containerd/config.toml" <<TOML
version = 3
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
temp = "$DIR/containerd/tmp"
[grpc]
  address = "$CSOCK"
[ttrpc]
  address = "$CSOCK.ttrpc"
[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "$PAUSE_IMAGE"
  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    # This sandbox lacks CAP_SYS_RESOURCE: runc cannot set the negative
    # oom_score_adj the kubelet asks for; clamp it to containerd's own.
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          BinaryName = "/usr/sbin/runc"
          SystemdCgroup = false
          Root = "$DIR/runc"
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$DIR/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
  [plugins."io.containerd.internal.v1.opt"]
    path = "$DIR/containerd/opt"
TOML
  cat > "$DIR/cni/net.d/10-vigil.conflist" <<JSON
{"cniVersion": "1.0.0", "name": "vigil", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$DIR/cni/ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  cat > "$DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hybrid hierarchy, no systemd, no swap on these machines.
failCgroupV1: false
cgroupDriver: cgroupfs
failSwapOn: false
containerRuntimeEndpoint: unix://$CSOCK
address: $NODE_IP
port: 20250
healthzBindAddress: 127.0.0.1
healthzPort: 20248
readOnlyPort: 0
podLogsDir: $DIR/pod-logs
volumePluginDir: $DIR/kubelet/volume-plugins
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization:
  mode: Webhook
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
resolvConf: /etc/resolv.conf
syncFrequency: 10s
fileCheckFrequency: 5s
YAML
}

import_images() {
  local dir="$VIGIL_STATE/images"
  if [[ ! -f $dir/pause.tar ]]; then
    python3 "$E2E_DIR/lib/image.py" --binary "$PAUSE" --install-path /pause --entrypoint '["/pause"]' \
      --user 65535:65535 --name pause --tag 1 --out "$dir/pause.tar" >/dev/null
  fi
  local tar
  for tar in "$dir"/*.tar; do
    ctr_ images import --no-unpack=false "$tar" >/dev/null 2>"$DIR/logs/import.log" \
      || { cat "$DIR/logs/import.log" >&2; die "importing $tar into containerd failed"; }
  done
  log "images: $(ctr_ images ls -q | grep -v '^sha256' | tr '\n' ' ')"
}

start() {
  [[ $(id -u) == 0 ]] || die "the node needs root (mounts, network namespaces, iptables)"
  build
  mkdir -p "$DIR/logs"
  claim_host
  [[ -f $DIR/sysctl.saved ]] || for k in $SYSCTLS; do
    [[ -e /proc/sys/$k ]] && echo "$k $(cat "/proc/sys/$k")"
  done > "$DIR/sysctl.saved"
  ip -4 addr show dev lo | grep -q " $NODE_IP/" || ip addr add "$NODE_IP/32" dev lo
  echo "$NODE_IP" > "$DIR/ip"
  # The control plane and the broker in node mode (restarted if they run
  # without it): both reachable from pods on the node IP.
  VIGIL_NODE_IP=$NODE_IP "$E2E_DIR/lib/kafka.sh" start
  VIGIL_NODE_IP=$NODE_IP "$E2E_DIR/lib/k8s.sh" start
  write_configs
  local k8s="$E2E_DIR/lib/k8s.sh"
  "$k8s" client kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "system:node:$NODE_NAME" "$DIR/kubelet.kubeconfig"
  "$k8s" client kube-scheduler /CN=system:kube-scheduler system:kube-scheduler "$DIR/scheduler.kubeconfig"
  "$k8s" client kube-proxy /CN=system:kube-proxy system:kube-proxy "$DIR/proxy.kubeconfig"

  launch containerd "$CONTAINERD_DIR/containerd" --config "$DIR/containerd/config.toml"
  wait_for 30 containerd ctr_ version || { tail -n 30 "$DIR/logs/containerd.log" >&2; die "containerd did not start"; }
  import_images
  launch kubelet "$KUBELET" --config="$DIR/kubelet.yaml" --kubeconfig="$DIR/kubelet.kubeconfig" \
    --root-dir="$DIR/kubelet" --cert-dir="$DIR/kubelet/pki" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" -v=1
  launch scheduler "$SCHEDULER" --kubeconfig="$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig="$DIR/scheduler.kubeconfig" --authorization-kubeconfig="$DIR/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port=0 --leader-elect=false
  local proxy_health; proxy_health=$(cat "$DIR/proxy-healthz-port" 2>/dev/null || free_port)
  echo "$proxy_health" > "$DIR/proxy-healthz-port"
  launch proxy "$PROXY" --kubeconfig="$DIR/proxy.kubeconfig" --hostname-override="$NODE_NAME" \
    --proxy-mode=iptables --cluster-cidr="$POD_CIDR" --metrics-bind-address=127.0.0.1:$(free_port) \
    --healthz-bind-address="127.0.0.1:$proxy_health" --conntrack-max-per-core=0 --nodeport-addresses="$NODE_IP/32"
  wait_for 120 "node $NODE_NAME" node_ready || { tail -n 40 "$DIR/logs/kubelet.log" >&2; die "the node did not become Ready (logs: $DIR/logs)"; }
  wait_for 60 kube-proxy proxy_ready "$proxy_health" || { tail -n 20 "$DIR/logs/proxy.log" >&2; die "kube-proxy did not start (logs: $DIR/logs/proxy.log)"; }
  wait_for 60 "the kubernetes Service" curl -sk --max-time 2 https://10.0.0.1/readyz \
    || die "the API server is not reachable through the kubernetes Service (10.0.0.1:443)"
  # Volumes: the kube-controller-manager's hostPath provisioner behind a
  # default StorageClass (single-node test clusters only).
  kubectl_ apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
YAML
  # That provisioner makes each volume a root-owned 0750 directory, which a
  # non-root pod cannot write (hostPath volumes ignore fsGroup). The
  # provisioners users run give the pod a writable volume (CSI drivers
  # honour fsGroup; local-path and minikube's make 0777 directories); this
  # helper widens new volume directories to 0777 as local-path does.
  mkdir -p /tmp/hostpath_pv
  launch volume-permissions bash -c 'while :; do
    find /tmp/hostpath_pv -mindepth 1 -maxdepth 1 -type d ! -perm -o+w -exec chmod 0777 {} + 2>/dev/null
    sleep 0.2
  done'
  set_env VIGIL_NODE "$NODE_NAME"
  set_env VIGIL_NODE_IP "$NODE_IP"
  set_env VIGIL_KAFKA_POD_BOOTSTRAP "$NODE_IP:$(cat "$VIGIL_STATE/kafka/pod-port")"
  set_env VIGIL_KAFKA_POD_SECURE_BOOTSTRAP "$NODE_IP:$(cat "$VIGIL_STATE/kafka/pod-secure-port")"
}

proxy_ready() {
  pid_alive "$DIR/proxy.pid" || { log "kube-proxy exited"; return 0; }
  curl -sf "http://127.0.0.1:$1/healthz" >/dev/null
}

node_ready() {
  pid_alive "$DIR/kubelet.pid" || { log "kubelet exited"; return 0; }
  kubectl_ get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' | grep -q True \
    && ! kubectl_ get node "$NODE_NAME" -o 'jsonpath={.spec.taints}' | grep -q not-ready
}

ipt_clean() { # IPTABLES TABLE: drop the jumps into KUBE-*/CNI-* chains, then the chains
  local ipt=$1 t=$2 ch r
  $ipt -t "$t" -S 2>/dev/null | grep -E -- '-j (KUBE|CNI)-' | grep -vE '^-A (KUBE|CNI)-' | sed 's/^-A/-D/' \
    | while read -r r; do eval "$ipt -t $t $r" || true; done || true
  for ch in $($ipt -t "$t" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do $ipt -t "$t" -F "$ch"; done
  for ch in $($ipt -t "$t" -S 2>/dev/null | awk '$1=="-N" && $2 ~ /^(KUBE|CNI)-/ {print $2}'); do $ipt -t "$t" -X "$ch" || true; done
}

stop() {
  [[ -d $DIR ]] || return 0
  # 1. Let the kubelet stop every pod: that runs the CNI teardown (veth,
  #    netns, iptables) for each.
  if pid_alive "$DIR/kubelet.pid" && pid_alive "$K8S_DIR/apiserver.pid"; then
    # No controller may replace the pods deleted here (k8s.sh starts it
    # again, in the mode asked for, with the next `up`).
    stop_pid "$K8S_DIR/controller-manager.pid" kube-controller-manager
    kubectl_ delete pods --all-namespaces --all --grace-period=1 --wait=false >/dev/null 2>&1 || true
    wait_for 60 "pods gone" bash -c "[[ -z \$(kubectl --kubeconfig $K8S_DIR/kubeconfig get pods -A -o name 2>/dev/null) ]]" \
      || log "pods still listed; removing their containers directly"
  fi
  local netns=""
  if pid_alive "$DIR/containerd.pid"; then
    netns=$(for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers info "$c" 2>/dev/null; done \
      | grep -o '/var/run/netns/cni-[0-9a-f-]*' | sort -u || true)
  fi
  stop_pid "$DIR/volume-permissions.pid" volume-permissions
  stop_pid "$DIR/proxy.pid" kube-proxy
  stop_pid "$DIR/scheduler.pid" kube-scheduler
  stop_pid "$DIR/kubelet.pid" kubelet
  if pid_alive "$DIR/containerd.pid"; then
    local c
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s KILL "$c" >/dev/null 2>&1 || true; done
    sleep 1
    for c in $(ctr_ containers ls -q 2>/dev/null); do
      ctr_ tasks rm -f "$c" >/dev/null 2>&1 || true; ctr_ containers rm "$c" >/dev/null 2>&1 || true
    done
    stop_pid "$DIR/containerd.pid" containerd
  fi
  # Shims outlive containerd (re-parented to init): end only our own.
  local p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/exe" 2>/dev/null) == "$CONTAINERD_DIR/containerd-shim-runc-v2" ]] && kill "${p#/proc/}" 2>/dev/null || true
  done
  local ns
  for ns in $netns; do umount "$ns" 2>/dev/null || true; rm -f "$ns"; done
  grep -o " $DIR[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  [[ -x $PROXY ]] && "$PROXY" --cleanup >/dev/null 2>&1 || true
  # The kubelet's KUBE-FIREWALL/KUBE-KUBELET-CANARY/KUBE-IPTABLES-HINT and
  # the bridge plugin's CNI-* masquerade chains (nothing else here uses them).
  local ipt t
  for ipt in iptables ip6tables; do for t in filter nat mangle; do ipt_clean "$ipt" "$t"; done; done
  ip link del "$BRIDGE" 2>/dev/null || true
  local h
  for h in /sys/fs/cgroup/*/kubepods; do find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null || true; done
  ip addr del "$NODE_IP/32" dev lo 2>/dev/null || true
  # Paths the kubelet, containerd and libcni use whatever their root dirs.
  find /var/log/containers -maxdepth 1 -lname "$DIR/*" -delete 2>/dev/null || true
  rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/cni/results/vigil-* /var/lib/cni/results/cni-loopback-*
  rm -rf /tmp/hostpath-provisioner /tmp/hostpath_pv
  rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet /var/log/containers /var/lib/cni/results /var/lib/cni \
    /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null || true
  if [[ -d /run/netns && -z $(ls -A /run/netns) ]]; then umount /run/netns 2>/dev/null || true; rmdir /run/netns || true; fi
  if [[ -f $DIR/sysctl.saved ]]; then
    local k v
    while read -r k v; do echo "$v" > "/proc/sys/$k" 2>/dev/null || true; done < "$DIR/sysctl.saved"
    rm -f "$DIR/sysctl.saved"
  fi
  rm -f "$DIR/ip"
  [[ -f $OWNER && $(cat "$OWNER") == "$DIR" ]] && rm -f "$OWNER"
  log "node stopped and host restored"
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  images) import_images ;;
  wipe) stop; rm -rf "$DIR" ;;
  *) echo "usage: $0 build|start|stop|images|wipe" >&2; exit 2 ;;
esac
