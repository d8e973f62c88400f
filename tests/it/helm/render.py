"""Renders and lints deploy/helm with the real Helm engine (helm-python-sdk, Helm v4's
Go SDK) and validates every rendered object against the Kubernetes OpenAPI schemas
(kubernetes-validate). Used by tests/it/helm.rs; prints one JSON document on stdout.

    render.py render CHART VALUES_JSON   -> {"objects": [...], "notes": "...",
                                             "unvalidated": ["cert-manager.io/v1 Issuer", ...]}
                                             or {"error": "..."}
    render.py lint CHART VALUES_JSON     -> helm lint's report
"""

import json
import sys

import helm_python as helm
import kubernetes_validate
import yaml

KUBE_VERSION = "1.30.0"


def render(chart_dir, values):
    chart = helm.Chart.load(chart_dir)
    try:
        manifests = chart.render(values, name="netsy", namespace="default", is_install=True)
    except helm.HelmError as e:
        return {"error": str(e)}
    objects, notes, unvalidated = [], "", []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for obj in yaml.safe_load_all(text):
            if not obj:
                continue
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                # CRDs (cert-manager, Prometheus Operator): no schema in the package.
                unvalidated.append(f"{obj['apiVersion']} {obj['kind']}")
            except kubernetes_validate.ValidationError as e:
                return {"error": f"{path}: {obj.get('kind')} {obj.get('metadata', {}).get('name')}: {e}"}
            objects.append(obj)
    return {"objects": objects, "notes": notes, "unvalidated": sorted(set(unvalidated))}


def main():
    cmd, chart_dir, values = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if cmd == "render":
        out = render(chart_dir, values)
    elif cmd == "lint":
        out = helm.lint(chart_dir, values, strict=True, kube_version="v" + KUBE_VERSION)
    else:
        sys.exit(f"unknown command {cmd}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
