"""Point upstream's admission webhook configurations at a controller that runs as a node process (make cluster).

Reads the rendered webhook manifests of a controller (``kubectl kustomize`` of its module's webhook directory) on
stdin and writes them with each webhook's ``clientConfig`` set to ``<url>/<path>`` and the cluster's CA, and each
configuration named ``<prefix>-<name>`` (Trainer and JobSet both call theirs ``mutating-webhook-configuration``).
Everything else upstream wrote (rules, selectors, failure policies) stays as it is; other objects (the webhook
Service a pod-based install needs) are left out.

    kubectl kustomize <module>/config/components/webhook | python webhooks.py URL CA_FILE PREFIX | kubectl apply -f -
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import yaml

KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")


def rewrite(documents: list[dict], url: str, ca_bundle: bytes, prefix: str) -> list[dict]:
    out = []
    for document in documents:
        if not document or document.get("kind") not in KINDS:
            continue
        document["metadata"] = {"name": f"{prefix}-{document['metadata']['name']}"}
        for webhook in document["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {"url": url.rstrip("/") + path,
                                       "caBundle": base64.b64encode(ca_bundle).decode()}
        out.append(document)
    if not out:
        raise SystemExit("webhooks.py: no webhook configuration on stdin")
    return out


def main(argv: list[str]) -> None:
    url, ca_file, prefix = argv
    documents = list(yaml.safe_load_all(sys.stdin))
    yaml.safe_dump_all(rewrite(documents, url, Path(ca_file).read_bytes(), prefix), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main(sys.argv[1:])
