"""What `make cluster` builds, checked without a cluster: the image built from a Debian root filesystem stays in
step with images/cpu.Dockerfile, image archives are what containerd imports, and the Go modules are pinned.
The cluster itself is proven by `make e2e` (e2e/), not here."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shlex
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "e2e" / "cluster"
DOCKERFILE = ROOT / "images" / "cpu.Dockerfile"


def _oci():
    spec = importlib.util.spec_from_file_location("e2e_oci", CLUSTER / "oci.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


oci = _oci()


def test_the_image_runs_as_the_dockerfile_says():
    """User, working directory, environment and command come from the Dockerfile itself (oci.dockerfile_config),
    so the two cannot drift; this pins what they are."""
    config = oci.dockerfile_config(DOCKERFILE)
    assert config.user == "1000:1000"
    assert config.workdir == "/home/flywheel"
    assert config.cmd == ["flywheel", "--help"] and config.entrypoint is None
    assert config.env["FLYWHEEL_HOME"] == "/opt/flywheel"  # where a relative seed.path resolves in a pod
    assert config.env["HF_HUB_OFFLINE"] == "1" and config.env["PYTHONUNBUFFERED"] == "1"
    assert "/usr/local/bin" in config.env["PATH"].split(":")  # the base image's PATH: pip's scripts are there


def test_images_sh_installs_what_the_dockerfile_installs():
    """Every file the Dockerfile copies in, and every package its pip lines name, is in images.sh too."""
    script = (CLUSTER / "images.sh").read_text()
    for sources, destination in oci.dockerfile_copies(DOCKERFILE):
        for source in sources:
            name = Path(source).name.replace("constraints.txt", "images/constraints.txt")
            assert f'"$repo/{name}"' in script or f"$repo/{name}" in script, (source, destination)
    pip_lines = [line for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
                 if line.startswith("RUN pip install")]
    packages = [word for line in pip_lines for word in shlex.split(line)[3:] if not word.startswith("-")
                and word not in ("constraints.txt",) and not word.startswith("https://")]
    assert packages == ["torch==2.13.0", ".[cluster]", "psycopg2-binary==2.9.13", "boto3==1.43.117"]
    for package in packages:
        assert package in script, package
    for user_line in ("flywheel:x:1000:1000::/home/flywheel", "flywheel:x:1000:"):
        assert user_line in script  # groupadd/useradd --uid 1000 --gid 1000 --create-home flywheel
    assert "command -v unshare" in script


def test_an_archive_holds_its_layers_config_and_names(tmp_path):
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    layer = tmp_path / "layer.tar"
    with tarfile.open(layer, "w") as tar:
        tar.add(root, arcname=".")
    config = oci.ImageConfig(env={"PATH": "/bin"}, user="1000:1000", workdir="/w", cmd=["hello"])
    out = tmp_path / "image.tar"
    digest = oci.write_archive(out, [layer], ["flywheel.local/hello:1"], config)
    with tarfile.open(out) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))
        image_bytes = archive.extractfile(f"{digest}.json").read()
        layer_bytes = archive.extractfile(manifest[0]["Layers"][0]).read()
    assert hashlib.sha256(image_bytes).hexdigest() == digest
    image = json.loads(image_bytes)
    assert manifest[0]["RepoTags"] == ["flywheel.local/hello:1"]
    assert image["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]
    assert image["config"] == {"Env": ["PATH=/bin"], "WorkingDir": "/w", "User": "1000:1000", "Cmd": ["hello"]}
    assert not Path(f"{out}.partial").exists()


def test_every_go_module_is_pinned_to_one_release():
    """The cluster is built from these go.mod files alone: each names exact releases (no pseudo-versions for the
    pieces the cluster runs), and the Kubernetes staging modules follow k8s.io/kubernetes' release."""
    kubernetes = (CLUSTER / "go.mod").read_text()
    release = re.search(r"k8s\.io/kubernetes v1\.(\d+)\.(\d+)", kubernetes)
    assert release, "k8s.io/kubernetes is not required at a release"
    staging = re.findall(r"^\s*(k8s\.io/[\w-]+) => k8s\.io/[\w-]+ (v\S+)$", kubernetes, re.M)
    assert len(staging) >= 30 and {v for _, v in staging} == {f"v0.{release[1]}.{release[2]}"}
    assert re.search(r"go\.etcd\.io/etcd/server/v3 v3\.\d+\.\d+\b", kubernetes)
    for module, path in (("github.com/argoproj/argo-workflows/v4", "argo"), ("github.com/coredns/coredns", "coredns"),
                         ("github.com/kubeflow/trainer/v2", "trainer"), ("sigs.k8s.io/jobset", "trainer")):
        text = (CLUSTER / path / "go.mod").read_text()
        assert re.search(rf"{re.escape(module)} v\d+\.\d+\.\d+\s", text), module
        assert (CLUSTER / path / "go.sum").is_file()
    assert (CLUSTER / "go.sum").is_file()


def test_webhooks_point_upstreams_configurations_at_the_node_and_keep_the_rest():
    """e2e/cluster/webhooks.py: upstream's webhook configurations (as `kubectl kustomize` renders JobSet's) get a URL
    on the node and the cluster's CA; names are prefixed (Trainer and JobSet share theirs); rules, selectors and
    failure policies stay; the Service a pod install needs is dropped."""
    import base64

    spec = importlib.util.spec_from_file_location("e2e_webhooks", CLUSTER / "webhooks.py")
    webhooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(webhooks)
    rendered = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "webhook-service", "namespace": "system"}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
         "metadata": {"name": "mutating-webhook-configuration", "labels": {"x": "y"}},
         "webhooks": [{"name": "mpod.kb.io", "failurePolicy": "Fail",
                       "objectSelector": {"matchExpressions": [{"key": "jobset.sigs.k8s.io/jobset-name",
                                                                "operator": "Exists"}]},
                       "clientConfig": {"service": {"name": "webhook-service", "namespace": "system",
                                                    "path": "/mutate--v1-pod"}}}]},
    ]
    (out,) = webhooks.rewrite(rendered, "https://10.244.0.1:9444/", b"CA PEM", "jobset")
    assert out["metadata"] == {"name": "jobset-mutating-webhook-configuration"}
    (hook,) = out["webhooks"]
    assert hook["clientConfig"] == {"url": "https://10.244.0.1:9444/mutate--v1-pod",
                                    "caBundle": base64.b64encode(b"CA PEM").decode()}
    assert hook["failurePolicy"] == "Fail" and hook["objectSelector"]["matchExpressions"][0]["operator"] == "Exists"
    import pytest

    with pytest.raises(SystemExit):
        webhooks.rewrite(rendered[:1], "https://x", b"", "p")


def _make_room(tmp_path: Path, *, free_gib: int, imported: str | None):
    """images.sh's make_room run alone, with df and ctr standing in for the disk and containerd."""
    import os
    import subprocess

    function = re.search(r"^make_room\(\) \{.*?^\}", (CLUSTER / "images.sh").read_text(), re.S | re.M).group(0)
    bin_dir, work = tmp_path / "bin", tmp_path / "images"
    bin_dir.mkdir(parents=True)
    work.mkdir()
    (bin_dir / "df").write_text(f"#!/bin/sh\necho Avail\necho {free_gib * 2**30}\n")
    (bin_dir / "ctr").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'ctr.log'}\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    with open(work / "flywheel-base-k1.tar", "wb") as layer:
        layer.truncate(5 * 2**30 + 1)  # sparse: a 6 GB layer by its size
    if imported is not None:
        (work / "flywheel-cpu.imported").write_text(imported + "\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    script = f"{function}\nwork={work} home={tmp_path} version=0.1.0 containerd_sock=sock\nmake_room k1"
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=env, capture_output=True, text=True)
    removed = (tmp_path / "ctr.log").read_text() if (tmp_path / "ctr.log").exists() else ""
    return result, removed


def test_the_image_is_written_only_where_the_disk_has_room_for_it(tmp_path):
    """A disk filled by the import makes the kubelet delete pause and argoexec, which cannot be pulled again."""
    # A new dependencies layer: the old image goes first, then archive + containerd's copy + snapshot (19 GB).
    result, removed = _make_room(tmp_path / "new", free_gib=18, imported=None)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "18 GB free, the flywheel-cpu image needs about 19 GB" in result.stderr
    assert "images rm --sync registry.example.com/flywheel/flywheel-cpu:0.1.0" in removed
    assert _make_room(tmp_path / "roomy", free_gib=19, imported="k0-abc")[0].returncode == 0
    # The same dependencies layer: only the archive (7 GB), and the old image stays.
    result, removed = _make_room(tmp_path / "same", free_gib=7, imported="k1-abc")
    assert result.returncode == 0 and removed == ""
    assert _make_room(tmp_path / "full", free_gib=6, imported="k1-abc")[0].returncode == 2



def test_the_cluster_waits_for_objects_that_are_not_there_yet(tmp_path):
    """A cold `make cluster` (new etcd) stopped twice where warm ones never do (2026-12-07): `kubectl wait` fails at
    once on a node the kubelet has not registered yet (NotFound) and on a CRD whose status has no conditions yet.
    wait_condition waits through both; every `kubectl wait` of cluster.sh goes through it."""
    import subprocess

    text = (CLUSTER / "cluster.sh").read_text()
    assert [line for line in text.splitlines() if "kubectl wait" in line and "wait_condition" not in line
            and not line.lstrip().startswith("#")] == ['  wait_for "$seconds" "$* ($condition)" kubectl wait '
                                                       '--for=condition="$condition" --timeout=5s "$@"']
    functions = [re.search(rf"^{name}\(\) \{{.*?^\}}", text, re.S | re.M).group(0)
                 for name in ("wait_for", "wait_condition")]
    calls = tmp_path / "calls"
    # kubectl as a new API server answers: NotFound, then an object without conditions, then the condition met.
    kubectl = f"""kubectl() {{
  echo "$*" >> {calls}
  case $(wc -l < {calls}) in
    1) echo 'Error from server (NotFound): nodes "flywheel-e2e" not found' >&2; return 1 ;;
    2) echo 'error: .status.conditions accessor error: <nil> is of the type <nil>' >&2; return 1 ;;
  esac
}}"""
    script = "\n".join(['log() { echo "$*" >&2; }', 'die() { log "$*"; exit 1; }', kubectl, *functions,
                        "logs=/logs", "wait_condition 20 Ready node/flywheel-e2e"])
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["wait --for=condition=Ready --timeout=5s node/flywheel-e2e"] * 3
    # A condition never met ends with one line naming the objects, within the time given.
    never = script.replace("wait_condition 20", "kubectl() { return 1; }; wait_condition 2")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", never], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == "node/flywheel-e2e (Ready) did not come up within 2s (logs: /logs)\n"


def test_down_unmounts_the_cluster_and_goes_on_when_nothing_is_mounted(tmp_path):
    """`cluster.sh down` on a cluster that never ran a pod stopped at its unmount step (grep found nothing, and
    set -e with pipefail ended the script), so `purge` deleted no state (2026-12-07)."""
    import subprocess

    function = re.search(r"^unmount_cluster\(\) \{.*?^\}", (CLUSTER / "cluster.sh").read_text(), re.S | re.M).group(0)
    unmounted = tmp_path / "unmounted"
    mounts = tmp_path / "mounts"
    script = "\n".join([f'umount() {{ echo "$2" >> {unmounted}; }}', function, "home=/h run=/r",
                        f"unmount_cluster {mounts}", "echo went on"])
    mounts.write_text("proc /proc proc rw 0 0\n/dev/vda / ext4 rw 0 0\n")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True)
    assert (result.returncode, result.stdout, unmounted.exists()) == (0, "went on\n", False), result.stderr
    mounts.write_text("/dev/vda /h/kubelet ext4 rw 0 0\ntmpfs /h/kubelet/pods/p/volumes/token tmpfs rw 0 0\n"
                      "shm /r/containerd/sandbox/shm tmpfs rw 0 0\n/dev/vda /h/kubeletx ext4 rw 0 0\n"
                      "tmpfs /h/kubelet/pods/p/volumes/token/deeper tmpfs rw 0 0\n/dev/vda / ext4 rw 0 0\n")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True)
    # The kubelet's root itself is a mount (a bind of itself): left, it made purge's rm fail (2026-12-07).
    assert result.returncode == 0 and unmounted.read_text().split() == [
        "/r/containerd/sandbox/shm", "/h/kubelet/pods/p/volumes/token/deeper", "/h/kubelet/pods/p/volumes/token",
        "/h/kubelet"]
