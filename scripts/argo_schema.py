"""Extract the part of Argo Workflows' JSON schema that a WorkflowTemplate and a CronWorkflow use, for
tests/test_argo.py (no network at test time).

Source: argoproj/argo-workflows at tag v4.0.5 (the Argo release KFP 2.17 installs), api/jsonschema/schema.json,
which Argo generates from the same OpenAPI definitions as its CRDs. Descriptions are dropped (size).
    git -C argo-workflows show v4.0.5:api/jsonschema/schema.json | python scripts/argo_schema.py > \
        tests/data/argo-v4.0.5.schema.json
"""

import json
import sys

ROOTS = ("io.argoproj.workflow.v1alpha1.WorkflowTemplate", "io.argoproj.workflow.v1alpha1.CronWorkflow")


def strip(node, properties: bool = False):
    """``node`` without its documentation strings; a ``properties`` map keeps every key (a field may be
    named ``description``, as a Parameter's is)."""
    if isinstance(node, dict):
        return {k: strip(v, properties=k == "properties" and not properties) for k, v in node.items()
                if properties or not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def refs(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value.rsplit("/", 1)[-1]
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def main() -> None:
    schema = json.load(sys.stdin)
    definitions = schema["definitions"]
    needed, stack = set(), list(ROOTS)
    while stack:
        name = stack.pop()
        if name not in needed:
            needed.add(name)
            stack.extend(refs(definitions[name]))
    subset = {"$schema": schema.get("$schema"), "source": "argoproj/argo-workflows v4.0.5 api/jsonschema/schema.json",
              "definitions": {name: strip(definitions[name]) for name in sorted(needed)}}
    json.dump(subset, sys.stdout, sort_keys=True, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
