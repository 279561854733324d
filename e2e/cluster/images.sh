#!/usr/bin/env bash
# The local cluster's images, built here and imported into its containerd (cluster.sh up calls this):
#   flywheel.local/pause:e2e                          the pod sandbox (cmd/pause)
#   flywheel.local/argoexec:<argo version>            Argo's executor (init, wait, emissary)
#   registry.example.com/flywheel/flywheel-cpu:0.1.0  images/cpu.Dockerfile, from a Debian root filesystem
#     (also as flywheel.local/flywheel-cpu:0.1.0): the name the manifests and flywheel.infra.images() give
#     when FLYWHEEL_REGISTRY is unset, so a pod finds it without a registry (imagePullPolicy IfNotPresent).
#
# No base image can be pulled: the flywheel image is debootstrap's Debian 12 (Python 3.11, as the Dockerfile's
# python:3.11-slim-bookworm) plus the Dockerfile's steps, run in a chroot, with the runtime config (user,
# working directory, environment, command) read from the Dockerfile itself (oci.py). Two layers: the
# dependencies from images/constraints.txt (rebuilt only when the lock, pyproject.toml or the Dockerfile
# change: minutes) and the project's source and seed (rebuilt every time: seconds). flywheel is installed
# editable in the first, pointing at /opt/flywheel/src, which the second layer holds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=$here/bin
home=${FLYWHEEL_E2E_HOME:-/var/lib/flywheel-e2e}
run=${FLYWHEEL_E2E_RUN:-/run/flywheel-e2e}
work=$home/images
containerd_sock=$run/containerd.sock
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")
python=${PYTHON:-python3}
log() { printf '%s images: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
mkdir -p "$work"

import() {  # import NAME ARCHIVE: into containerd's k8s.io namespace, unless this very archive is there
  local name=$1 archive=$2 digest
  digest=$(sha256sum "$archive" | cut -c1-64)
  if [[ -f $work/$name.imported && $(cat "$work/$name.imported") == "$digest" ]] \
     && ctr --address "$containerd_sock" -n k8s.io images ls -q | grep -q "$name"; then
    log "$name: already imported"
    return
  fi
  ctr --address "$containerd_sock" -n k8s.io images import "$archive" >/dev/null
  echo "$digest" > "$work/$name.imported"
  log "$name: imported"
}

layer_of() {  # layer_of DIR TAR: a layer tarball of DIR's contents, owned by root unless DIR says otherwise
  tar --numeric-owner --sort=name --mtime=@0 -C "$1" -cf "$2.partial" . && mv "$2.partial" "$2"
}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# --- pause ----------------------------------------------------------------------------------------------------
pause_image() {
install -D -m 0755 "$bin/pause" "$stage/pause/pause"
layer_of "$stage/pause" "$work/pause-layer.tar"
"$python" "$here/oci.py" --layer "$work/pause-layer.tar" --tag flywheel.local/pause:e2e --entrypoint '["/pause"]' \
  --out "$work/pause.tar" >/dev/null
import pause "$work/pause.tar"
}

# --- argoexec (as Argo's own image: the static binary at /bin/argoexec, root, ENTRYPOINT argoexec) ----------------
argoexec_image() {
argo_version=$("$here/cluster.sh" argo-version)
mkdir -p "$stage/argoexec/bin" "$stage/argoexec/etc" "$stage/argoexec/tmp"
chmod 1777 "$stage/argoexec/tmp"
install -m 0755 "$bin/argoexec" "$stage/argoexec/bin/argoexec"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\nargo:x:8737:8737::/tmp:/sbin/nologin\n' \
  > "$stage/argoexec/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\nargo:x:8737:\n' > "$stage/argoexec/etc/group"
printf 'hosts: files dns\n' > "$stage/argoexec/etc/nsswitch.conf"
layer_of "$stage/argoexec" "$work/argoexec-layer.tar"
"$python" "$here/oci.py" --layer "$work/argoexec-layer.tar" --tag "flywheel.local/argoexec:$argo_version" \
  --entrypoint '["argoexec"]' --out "$work/argoexec.tar" >/dev/null
import argoexec "$work/argoexec.tar"
}

# --- flywheel-cpu: the dependencies layer ---------------------------------------------------------------------
flywheel_base() {
debian=$home/rootfs/debian
if [[ ! -f $debian/.complete ]]; then
  log "debootstrap Debian 12 (minbase, python3)"
  rm -rf "$debian"
  debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    bookworm "$debian" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -5 "$work/debootstrap.log"; exit 1; }
  touch "$debian/.complete"
fi
key=$( (cat "$repo/images/constraints.txt" "$repo/pyproject.toml" "$repo/images/cpu.Dockerfile"; declare -f flywheel_base) \
  | sha256sum | cut -c1-16)
base=$home/rootfs/flywheel-base
if [[ ! -f $work/flywheel-base-$key.tar ]]; then
  log "flywheel-cpu dependencies ($key): a few minutes"
  rm -rf "$base"
  cp -a "$debian" "$base"
  rm -f "$base/.complete"
  mkdir -p "$base/opt/flywheel"
  cp "$repo/images/constraints.txt" "$base/opt/flywheel/constraints.txt"
  cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/src" "$base/opt/flywheel/"
  cp /etc/resolv.conf "$base/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$base/opt/host-ca.crt"   # this machine's view of the registries
  mount -t proc proc "$base/proc"
  mount --bind /dev "$base/dev"
  trap 'umount "$base/proc" "$base/dev" 2>/dev/null || true; rm -rf "$stage"' EXIT
  # The Dockerfile's RUN lines, in order (tests/test_e2e_cluster.py keeps the two in step).
  chroot "$base" env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root PIP_CERT=/opt/host-ca.crt \
    SSL_CERT_FILE=/opt/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 sh -euxc '
    # groupadd/useradd (the passwd package) are not in minbase: the same entries, written directly.
    echo "flywheel:x:1000:" >> /etc/group
    echo "flywheel:x:1000:1000::/home/flywheel:/bin/sh" >> /etc/passwd
    echo "flywheel:!:20000::::::" >> /etc/shadow
    install -d -o 1000 -g 1000 -m 0755 /home/flywheel
    cd /opt/flywheel
    pip install -q --break-system-packages --constraint constraints.txt uv
    # torch with pip, as the Makefile does: the index here serves pip its CPU build (uv gets the CUDA one).
    pip install -q --break-system-packages --constraint constraints.txt torch==2.13.0
    uv pip install -q --system --break-system-packages --compile-bytecode --constraint constraints.txt \
      ".[cluster]" psycopg2-binary==2.9.13 boto3==1.43.117
    uv pip uninstall -q --system --break-system-packages flywheel
    uv pip install -q --system --break-system-packages --no-deps -e .
    command -v unshare
    flywheel --help >/dev/null
  ' >"$work/flywheel-base.log" 2>&1 || { tail -20 "$work/flywheel-base.log"; exit 1; }
  umount "$base/proc" "$base/dev"
  rm -rf "$base/opt/flywheel/src" "$base/opt/host-ca.crt" "$base/root/.cache" "$base/var/cache/apt/archives/"*.deb
  : > "$base/etc/resolv.conf"
  layer_of "$base" "$work/flywheel-base-$key.tar"
  find "$work" -name 'flywheel-base-*.tar' ! -name "flywheel-base-$key.tar" -delete
  rm -rf "$base"
fi
}

# --- flywheel-cpu: the source layer, and the image --------------------------------------------------------------
# Room for the image before it is written: its archive, and where its dependencies layer is new to containerd, the
# layer's copy in containerd and its unpacked snapshot (3x the layer). A disk that fills here is worse than a failed
# build: at 100% the kubelet deletes every image no pod uses, pause and argoexec included, and those cannot be
# pulled again, so the next pods wait forever. A new dependencies layer replaces the old image first.
make_room() {  # make_room KEY: KEY is the dependencies layer's
  local layer_gb need_gb free_gb
  layer_gb=$(( $(stat -c %s "$work/flywheel-base-$1.tar") / 2**30 + 1 ))
  need_gb=$(( layer_gb + 1 ))
  if [[ $(cat "$work/flywheel-cpu.imported" 2>/dev/null || true) != "$1-"* ]]; then
    ctr --address "$containerd_sock" -n k8s.io images rm --sync "registry.example.com/flywheel/flywheel-cpu:$version" \
      "flywheel.local/flywheel-cpu:$version" >/dev/null 2>&1 || true
    need_gb=$(( 3 * layer_gb + 1 ))
  fi
  free_gb=$(( $(df --output=avail -B1 "$home" | tail -1) / 2**30 ))
  if (( free_gb < need_gb )); then
    echo "images.sh: $home: $free_gb GB free, the flywheel-cpu image needs about $need_gb GB (its archive, and" \
      "containerd's copy of a new dependencies layer, unpacked): free some, or set FLYWHEEL_E2E_HOME" >&2
    exit 2
  fi
}

flywheel_image() {
mkdir -p "$stage/app/opt/flywheel" "$stage/app/home/flywheel"
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/src" "$repo/seed" "$stage/app/opt/flywheel/"
find "$stage/app" -name __pycache__ -prune -exec rm -rf {} +
chown 1000:1000 "$stage/app/home/flywheel"
chmod -R a+rX "$stage/app/opt"
layer_of "$stage/app" "$work/flywheel-app.tar"
# The archive is as large as the dependencies (6 GB: torch here is the CUDA build), so it is written only when
# a layer changed, and deleted once containerd has it.
stamp="$key-$(sha256sum "$work/flywheel-app.tar" | cut -c1-64)"  # $key: the dependencies layer's
if [[ -f $work/flywheel-cpu.imported && $(cat "$work/flywheel-cpu.imported") == "$stamp" ]] \
   && ctr --address "$containerd_sock" -n k8s.io images ls -q | grep -q "flywheel-cpu:$version"; then
  log "flywheel-cpu: already imported"
  return
fi
make_room "$key"
"$python" "$here/oci.py" --layer "$work/flywheel-base-$key.tar" --layer "$work/flywheel-app.tar" \
  --dockerfile "$repo/images/cpu.Dockerfile" --out "$work/flywheel-cpu.tar" \
  --tag "registry.example.com/flywheel/flywheel-cpu:$version" --tag "flywheel.local/flywheel-cpu:$version" >/dev/null
ctr --address "$containerd_sock" -n k8s.io images import "$work/flywheel-cpu.tar" >/dev/null
rm -f "$work/flywheel-cpu.tar"
echo "$stamp" > "$work/flywheel-cpu.imported"
log "flywheel-cpu: imported"
}

case ${1:-all} in
  all) pause_image; argoexec_image; flywheel_base; flywheel_image ;;
  flywheel-base) flywheel_base ;;   # the slow part alone, e.g. while the Go binaries build
  pause) pause_image ;;
  argoexec) argoexec_image ;;
  flywheel) flywheel_base; flywheel_image ;;
  *) echo "usage: images.sh [all|flywheel-base|pause|argoexec|flywheel]" >&2; exit 2 ;;
esac
