#!/usr/bin/env bash
# Builds the local cluster's binaries from the Go module proxy into e2e/cluster/bin (make cluster):
# Kubernetes v1.34.4 (apiserver, controller-manager, scheduler, kubelet, kube-proxy, kubectl), etcd
# v3.6.4 (the release Kubernetes is built against), the pod sandbox's pause, CoreDNS v1.14.7, Argo
# Workflows v4.0.5 (controller, executor, CLI with the server), and Kubeflow Trainer v2.3.0's controller
# manager with JobSet v0.12.0 (multi-node training). Versions come from the go.mod files
# alone. Cold: every module is downloaded and compiled (e2e/README.md has the time); warm: seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=$here/bin
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local
mkdir -p "$bin"

cd "$here"
version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
minor=$(echo "$version" | cut -d. -f2)
# Without these the binaries report v0.0.0-master, which kubectl and the kubelet treat as skewed.
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
go build -trimpath -ldflags "$ldflags" -o "$bin/" tool
go build -trimpath -ldflags "-s -w" -o "$bin/" ./cmd/etcd ./cmd/pause

cd "$here/coredns"
go build -trimpath -ldflags "-s -w" -o "$bin/" tool

cd "$here/trainer"
go build -trimpath -ldflags "-s -w" -o "$bin/" tool

cd "$here/argo"
go mod download github.com/argoproj/argo-workflows/v4  # `go list -m` names its directory only once it is there
argo_version=$(go list -m -f '{{.Version}}' github.com/argoproj/argo-workflows/v4)
argo_dir=$(go list -m -f '{{.Dir}}' github.com/argoproj/argo-workflows/v4)
# The module ships no built UI (ui/dist/app, which ui/embed.go embeds), so it does not compile as it is. The
# build uses a scratch copy of the module with an empty UI (a go.mod of the build's own replaces it there);
# the Argo Server's API, which `flywheel argo submit` uses, is complete, and the copy is deleted after.
scratch=$(mktemp -d)
trap 'chmod -R u+w "$scratch"; rm -rf "$scratch"' EXIT
cp -r "$argo_dir" "$scratch/argo-workflows"
chmod -R u+w "$scratch/argo-workflows"
mkdir -p "$scratch/argo-workflows/ui/dist/app"
echo '<!doctype html><title>Argo Server</title><p>No UI in this build: use the API or the argo CLI.' \
  > "$scratch/argo-workflows/ui/dist/app/index.html"
# v4.0.5's module zip also lacks workflow/executor/osspecific/signal_linux.go (the repository has it), so
# argoexec does not compile for Linux; the module's own signal_darwin.go is plain POSIX (setpgid, kill, wait4)
# and serves Linux unchanged.
osspecific=$scratch/argo-workflows/workflow/executor/osspecific
[[ -f $osspecific/signal_linux.go ]] || cp "$osspecific/signal_darwin.go" "$osspecific/signal_linux.go"
cp go.mod "$scratch/go.mod"
cp go.sum "$scratch/go.sum"
go mod edit -modfile="$scratch/go.mod" -replace "github.com/argoproj/argo-workflows/v4=$scratch/argo-workflows"
go build -modfile="$scratch/go.mod" -trimpath -ldflags "-s -w -X github.com/argoproj/argo-workflows/v4.version=$argo_version" \
  -o "$bin/" tool
ls -l "$bin"
