#!/usr/bin/env bash
# A real single-node Kubernetes for the cluster doors' end-to-end test (make cluster, make e2e).
#
#   e2e/cluster/cluster.sh up       build what is missing, then start everything (idempotent)
#   e2e/cluster/cluster.sh down     stop everything; keeps the built binaries and images
#   e2e/cluster/cluster.sh purge    down, then delete the cluster's state (etcd, containerd's images)
#   e2e/cluster/cluster.sh status   what runs, and the node's readiness
#   e2e/cluster/cluster.sh exec CMD run CMD inside the cluster's network (kubectl, flywheel argo submit, curl)
#
# Everything comes from the package registries: Kubernetes, etcd, CoreDNS, Argo, Kubeflow Trainer and JobSet from
# the Go module proxy (build.sh, pinned by the go.mod files here), containerd, runc and the CNI plugins from Debian, and the
# images from a Debian root filesystem (images.sh). Every process runs in a network namespace of its own
# (flywheel-e2e), so the API server, the kubelet, CoreDNS, the Argo Server and the pods listen only there, and
# kube-proxy's iptables rules never touch the host's. The host reaches it with `cluster.sh exec`.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$here/bin
home=${FLYWHEEL_E2E_HOME:-/var/lib/flywheel-e2e}   # etcd, containerd's root, the kubelet, the volume
run=${FLYWHEEL_E2E_RUN:-/run/flywheel-e2e}         # sockets, pid files
logs=$home/logs
pki=$home/pki
netns=flywheel-e2e
node=flywheel-e2e
node_ip=10.244.0.1           # the bridge's address inside the namespace: the node, and the pods' gateway
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/24
api_service_ip=10.96.0.1
containerd_sock=$run/containerd.sock
argo_namespace=argo

in_ns() { nsenter --net="/run/netns/$netns" "$@"; }
log() { printf '%s cluster: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "$*"; exit 1; }

# --- processes: each a pid file under $run and a log under $logs -----------------------------------------------
start() {  # start NAME COMMAND...: in the namespace, in the background, unless it already runs
  local name=$1; shift
  if running "$name"; then return; fi
  mkdir -p "$logs" "$run"
  # nsenter and setsid exec the command: $! is its pid (a function here would leave a subshell in between).
  # In /: a daemon (and every containerd shim it forks) must not hold the checkout as its working directory,
  # which a later clone's cluster would otherwise meet as a deleted directory.
  nsenter --net="/run/netns/$netns" --wd=/ setsid "$@" >>"$logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$run/$name.pid"
  log "started $name (pid $!, log $logs/$name.log)"
}
running() { [[ -f $run/$1.pid ]] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }
stop() {
  local name=$1 pid
  running "$name" || { rm -f "$run/$name.pid"; return 0; }
  pid=$(cat "$run/$name.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$run/$name.pid"
  log "stopped $name"
}
wait_for() {  # wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds
  local seconds=$1 what=$2 end; shift 2
  end=$((SECONDS + seconds))
  while ((SECONDS < end)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "$what did not come up within ${seconds}s (logs: $logs)"
}
wait_condition() {  # wait_condition SECONDS CONDITION OBJECT...: until every object exists and has the condition
  # `kubectl wait` alone fails at once, instead of waiting, on an object that is not there yet (NotFound: the node
  # before the kubelet registers it on a new etcd) or whose status has no conditions yet (a CRD just created:
  # ".status.conditions accessor error"). Both stopped a cold `make cluster` (2026-12-07); warm ones never saw them.
  local seconds=$1 condition=$2; shift 2
  wait_for "$seconds" "$* ($condition)" kubectl wait --for=condition="$condition" --timeout=5s "$@"
}

kubectl() { in_ns "$bin/kubectl" --kubeconfig "$pki/admin.kubeconfig" "$@"; }

# --- network ------------------------------------------------------------------------------------------------------
network() {
  [[ -e /run/netns/$netns ]] || ip netns add "$netns"
  in_ns ip link set lo up
  if ! in_ns ip link show fw0 >/dev/null 2>&1; then
    in_ns ip link add fw0 type bridge
    in_ns ip addr add "$node_ip/24" dev fw0
  fi
  in_ns ip link set fw0 up
  # The node itself reaches Services too (kubectl port checks, the tests): a route for their range, which
  # kube-proxy's OUTPUT rules then translate. Pods reach them through their default route.
  in_ns ip route replace "$service_cidr" dev fw0 src "$node_ip"
  in_ns sysctl -qw net.ipv4.ip_forward=1
  # Service traffic between two pods on the bridge must pass iptables (kube-proxy's DNAT and its reverse).
  in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1 || true
  mkdir -p "$home/cni"
  cat > "$home/cni/10-flywheel.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "flywheel",
 "plugins": [
  {"type": "bridge", "bridge": "fw0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$home/cni-ipam",
            "ranges": [[{"subnet": "$pod_cidr", "gateway": "$node_ip"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
 ]}
EOF
}

# --- certificates and kubeconfigs ---------------------------------------------------------------------------------
cert() {  # cert NAME CN ORG [SUBJECT_ALT_NAMES]: a key and a certificate signed by the cluster's CA
  local name=$1 cn=$2 org=$3 sans=${4:-}
  [[ -f $pki/$name.crt ]] && return
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "/CN=$cn${org:+/O=$org}" -out "$pki/$name.csr" 2>/dev/null
  local ext=$pki/$name.ext
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' > "$ext"
  [[ -n $sans ]] && printf 'subjectAltName=%s\n' "$sans" >> "$ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 \
    -extfile "$ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$ext"
}
kubeconfig() {  # kubeconfig NAME: for the certificate NAME
  local name=$1
  cat > "$pki/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: flywheel-e2e
  cluster: {server: "https://$node_ip:6443", certificate-authority: "$pki/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$pki/$name.crt", client-key: "$pki/$name.key"}
contexts:
- name: flywheel-e2e
  context: {cluster: flywheel-e2e, user: $name}
current-context: flywheel-e2e
EOF
}
certificates() {
  mkdir -p "$pki"
  chmod 700 "$pki"
  if [[ ! -f $pki/ca.crt ]]; then
    openssl genrsa -out "$pki/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=flywheel-e2e-ca" -days 3650 -out "$pki/ca.crt" 2>/dev/null
  fi
  [[ -f $pki/sa.key ]] || { openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null; openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null; }
  cert apiserver kube-apiserver "" \
    "IP:$node_ip,IP:$api_service_ip,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin admin system:masters
  cert kubelet "system:node:$node" system:nodes "IP:$node_ip,DNS:$node"
  cert controller-manager system:kube-controller-manager ""
  cert scheduler system:kube-scheduler ""
  cert proxy system:kube-proxy ""
  for name in admin kubelet controller-manager scheduler proxy; do kubeconfig "$name"; done
}

# --- the control plane and the node -------------------------------------------------------------------------------
containerd_up() {
  mkdir -p "$home/containerd" "$run"
  cat > "$home/containerd.toml" <<EOF
version = 2
root = "$home/containerd"
state = "$run/containerd"
[grpc]
  address = "$containerd_sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "flywheel.local/pause:e2e"
  # This machine may not lower a process's OOM score below its own (no CAP_SYS_RESOURCE): containers keep
  # theirs at or above containerd's, and runc-oom-clamp does the same for pod sandboxes.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$home/cni"
EOF
  # The shim runs the first `runc` on its PATH: runc-oom-clamp, which runs Debian's runc. A copy in the
  # cluster's home, run by Debian's python3: the shims of running pods outlive this checkout.
  mkdir -p "$home/shim-path"
  rm -f "$home/shim-path/runc"
  sed '1s|.*|#!/usr/bin/python3|' "$here/runc-oom-clamp" > "$home/shim-path/runc.new"
  chmod 755 "$home/shim-path/runc.new" && mv "$home/shim-path/runc.new" "$home/shim-path/runc"
  start containerd env PATH="$home/shim-path:$PATH" containerd --config "$home/containerd.toml"
  wait_for 30 containerd ctr --address "$containerd_sock" version
}

control_plane_up() {
  start etcd "$bin/etcd" --name flywheel-e2e --data-dir "$home/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster flywheel-e2e=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
  wait_for 30 etcd in_ns curl -fsS http://127.0.0.1:2381/health
  start apiserver "$bin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --advertise-address="$node_ip" --secure-port=6443 --service-cluster-ip-range="$service_cidr" \
    --client-ca-file="$pki/ca.crt" --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --kubelet-client-certificate="$pki/admin.crt" --kubelet-client-key="$pki/admin.key" \
    --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
    --profiling=false
  wait_for 90 kube-apiserver kubectl get --raw /readyz
  start controller-manager "$bin/kube-controller-manager" --kubeconfig="$pki/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$pki/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$pki/controller-manager.kubeconfig" \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --use-service-account-credentials=true --leader-elect=false --bind-address=127.0.0.1 \
    --service-cluster-ip-range="$service_cidr" --profiling=false
  start scheduler "$bin/kube-scheduler" --kubeconfig="$pki/scheduler.kubeconfig" \
    --authentication-kubeconfig="$pki/scheduler.kubeconfig" --authorization-kubeconfig="$pki/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --profiling=false
}

node_up() {
  mkdir -p "$home/kubelet"
  : > "$home/resolv.conf"  # pods resolve through CoreDNS alone: nothing outside the cluster has a name
  cat > "$home/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$pki/kubelet.crt"
tlsPrivateKeyFile: "$pki/kubelet.key"
containerRuntimeEndpoint: "unix://$containerd_sock"
cgroupDriver: cgroupfs
# This machine kind mounts cgroup v1 (hybrid); Kubernetes 1.34 still runs there when told to.
failCgroupV1: false
failSwapOn: false
clusterDNS: ["$node_ip"]
clusterDomain: cluster.local
resolvConf: "$home/resolv.conf"
# The images are built here and cannot be pulled again: never collect them, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "200Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
maxPods: 60
EOF
  start kubelet "$bin/kubelet" --config="$home/kubelet.yaml" --kubeconfig="$pki/kubelet.kubeconfig" \
    --root-dir="$home/kubelet" --node-ip="$node_ip" --hostname-override="$node" --cert-dir="$home/kubelet/pki"
  cat > "$home/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: "$pki/proxy.kubeconfig"}
hostnameOverride: $node
mode: iptables
clusterCIDR: $pod_cidr
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0}  # leave the kernel's conntrack table size alone
EOF
  start proxy "$bin/kube-proxy" --config="$home/kube-proxy.yaml"
  cat > "$home/Corefile" <<EOF
.:53 {
    bind $node_ip
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $pki/admin.kubeconfig flywheel-e2e
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
  start coredns "$bin/coredns" -conf "$home/Corefile"
  wait_condition 120 Ready "node/$node"
}

volume() {
  # The ReadWriteMany model volume: a directory on this node as a PersistentVolume with no storage class, which
  # a claim with no class binds to when the cluster has no default class (infra/base/runs/models-pvc.yaml).
  mkdir -p "$home/volumes/models"
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: flywheel-e2e-models}
spec:
  capacity: {storage: 500Gi}
  accessModes: [ReadWriteMany, ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: "$home/volumes/models", type: Directory}
EOF
}

argo_up() {
  local argo_dir
  argo_dir=$(cd "$here/argo" && GOFLAGS=-mod=mod go mod download github.com/argoproj/argo-workflows/v4 \
    && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' github.com/argoproj/argo-workflows/v4)
  # Argo's own CustomResourceDefinitions, read from the module that built the controller.
  kubectl apply --server-side -k "$argo_dir/manifests/base/crds/minimal" >/dev/null
  kubectl create namespace "$argo_namespace" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # The controller's and the server's settings (both exit without it); the executor image is a flag below.
  kubectl -n "$argo_namespace" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata: {name: workflow-controller-configmap}
data:
  executor: |
    imagePullPolicy: IfNotPresent
EOF
  start workflow-controller env LEADER_ELECTION_DISABLE=true "$bin/workflow-controller" --kubeconfig "$pki/admin.kubeconfig" \
    --namespaced --managed-namespace "$argo_namespace" --namespace "$argo_namespace" \
    --executor-image flywheel.local/argoexec:"$(argo_version)" --executor-image-pull-policy IfNotPresent
  start argo-server "$bin/argo" server --kubeconfig "$pki/admin.kubeconfig" --namespaced \
    --namespace "$argo_namespace" --auth-mode server --secure=false --port 2746
  wait_for 60 "the Argo Server" in_ns curl -fsS http://127.0.0.1:2746/api/v1/version
}
argo_version() { (cd "$here/argo" && GOFLAGS=-mod=mod go list -m -f '{{.Version}}' github.com/argoproj/argo-workflows/v4); }

module_dir() {  # module_dir GO_MODULE_DIR MODULE: where the module that built a binary lies (its manifests are read there)
  (cd "$here/$1" && GOFLAGS=-mod=mod go mod download "$2" && GOFLAGS=-mod=mod go list -m -f '{{.Dir}}' "$2")
}

trainer_up() {
  # Kubeflow Trainer and JobSet (multi-node training, train.num_nodes > 1): their CRDs and admission webhooks from
  # the modules that built the controllers, the controllers as node processes like Argo's. Upstream runs them as
  # pods behind a webhook Service, with certificates their cert rotators make; here the webhook servers listen on the
  # node's address with a certificate from the cluster's CA, and webhooks.py points upstream's webhook
  # configurations at them (URL and CA; rules, selectors and failure policies as upstream wrote them).
  local trainer_dir jobset_dir certs=$home/webhook-certs
  trainer_dir=$(module_dir trainer github.com/kubeflow/trainer/v2)
  jobset_dir=$(module_dir trainer sigs.k8s.io/jobset)
  kubectl apply --server-side -k "$trainer_dir/manifests/base/crds" >/dev/null
  kubectl apply --server-side -f "$jobset_dir/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml" >/dev/null
  # The controllers watch these kinds from their start: served first, not just created.
  wait_condition 60 Established crd/jobsets.jobset.x-k8s.io crd/trainjobs.trainer.kubeflow.org \
    crd/trainingruntimes.trainer.kubeflow.org crd/clustertrainingruntimes.trainer.kubeflow.org
  cert webhooks flywheel-e2e-webhooks "" "IP:$node_ip"
  # Trainer reads its serving certificate from controller-runtime's default directory under TMPDIR.
  mkdir -p "$certs/k8s-webhook-server/serving-certs"
  cp "$pki/webhooks.crt" "$certs/k8s-webhook-server/serving-certs/tls.crt"
  cp "$pki/webhooks.key" "$certs/k8s-webhook-server/serving-certs/tls.key"
  cat > "$home/jobset.yaml" <<EOF
apiVersion: config.jobset.x-k8s.io/v1alpha1
kind: Configuration
leaderElection: {leaderElect: false}
internalCertManagement: {enable: false}
webhook: {host: $node_ip, port: 9444, certDir: $certs/k8s-webhook-server/serving-certs}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "127.0.0.1:8092"}
EOF
  cat > "$home/trainer.yaml" <<EOF
apiVersion: config.trainer.kubeflow.org/v1alpha1
kind: Configuration
leaderElection: {leaderElect: false}
certManagement: {enable: false}
webhook: {host: $node_ip, port: 9443}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "127.0.0.1:8091"}
EOF
  start jobset env KUBECONFIG="$pki/admin.kubeconfig" "$bin/jobset" --config "$home/jobset.yaml"
  start trainer env KUBECONFIG="$pki/admin.kubeconfig" TMPDIR="$certs" "$bin/trainer-controller-manager" \
    --config "$home/trainer.yaml"
  wait_for 60 "the JobSet controller" in_ns curl -fsS http://127.0.0.1:8092/readyz
  wait_for 60 "the Trainer controller" in_ns curl -fsS http://127.0.0.1:8091/readyz
  kubectl kustomize "$jobset_dir/config/components/webhook" \
    | "$repo/.venv/bin/python" "$here/webhooks.py" "https://$node_ip:9444" "$pki/ca.crt" jobset | kubectl apply -f - >/dev/null
  kubectl kustomize "$trainer_dir/manifests/base/webhook" \
    | "$repo/.venv/bin/python" "$here/webhooks.py" "https://$node_ip:9443" "$pki/ca.crt" kubeflow-trainer \
    | kubectl apply -f - >/dev/null
}

packages() {  # Debian's: the container runtime, the CNI plugins, iptables for kube-proxy, debootstrap for images
  local wanted=(containerd runc containernetworking-plugins iptables conntrack debootstrap openssl curl) missing=()
  for package in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
  done
  if (( ${#missing[@]} )); then
    log "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

up() {
  [[ $(id -u) == 0 ]] || die "needs root (network namespace, containerd, the kubelet)"
  packages
  [[ -x $bin/kubelet && -x $bin/argo && -x $bin/coredns && -x $bin/trainer-controller-manager && -x $bin/jobset ]] \
    || "$here/build.sh"
  network
  certificates
  containerd_up
  "$here/images.sh"   # imports what is missing into containerd (pause, argoexec, flywheel-cpu)
  control_plane_up
  node_up
  volume
  argo_up
  trainer_up
  log "up: kubectl with: e2e/cluster/cluster.sh exec kubectl ...; Argo Server: http://127.0.0.1:2746 (in the namespace)"
}

down() {
  for name in trainer jobset argo-server workflow-controller coredns proxy kubelet scheduler controller-manager apiserver etcd; do
    stop "$name"
  done
  # The pods' containers outlive the kubelet: stop them, then containerd.
  if running containerd; then
    for task in $(ctr --address "$containerd_sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$containerd_sock" -n k8s.io tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  # A shim whose task was killed lives on until its container is deleted: none may outlast the cluster.
  pkill -9 -f "containerd-shim-runc-v2 .*-address $containerd_sock" 2>/dev/null || true
  unmount_cluster
  [[ -e /run/netns/$netns ]] && ip netns delete "$netns"  # with the cluster's iptables
  log "down"
}

unmount_cluster() {  # unmount_cluster [MOUNTS]: the mounts of the kubelet (volumes, tokens) and the pods, deepest first
  # A cluster that never ran a pod has none: grep's "no match" must not end `down` there (set -e, pipefail), as it
  # did until 2026-12-07, leaving the namespace and, under `purge`, all the state.
  # The kubelet's root is a mount of its own too (a bind of itself, for mount propagation).
  { grep -o " $home/kubelet\(/[^ ]*\)\? \| $run/[^ ]*" "${1:-/proc/mounts}" || true; } | sort -r \
    | while read -r mount; do umount -l "$mount" || true; done
}

status() {
  for name in containerd etcd apiserver controller-manager scheduler kubelet proxy coredns workflow-controller argo-server \
              jobset trainer; do
    if running "$name"; then echo "$name: running (pid $(cat "$run/$name.pid"))"; else echo "$name: stopped"; fi
  done
  running apiserver && kubectl get nodes -o wide
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then  # sourced: the functions alone (debugging one phase)
  case ${1:-} in
    up) up ;;
    down) down ;;
    purge) down; rm -rf "$home/etcd" "$home/containerd" "$home/kubelet" "$home/cni-ipam" "$home/volumes" "$pki" "$home/logs" ;;
    status) status ;;
    exec) shift; export KUBECONFIG=$pki/admin.kubeconfig PATH=$bin:$PATH; in_ns "$@" ;;
    argo-version) argo_version ;;
    # Faults for make e2e: the workflow controller stopped mid-round, then started again.
    stop-controller) stop workflow-controller ;;
    start-controller) argo_up ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
fi
