"""Offline validation of rendered Kubernetes objects.

Built-in kinds: `kubernetes-validate --strict` (bundled schemas; unknown fields rejected). KubeRay
kinds: the `openAPIV3Schema` of the KubeRay v1.7.0 CRDs copied into k8s/crds/, checked with
`jsonschema`, strict as well: an object with `properties` and neither `additionalProperties` nor
`x-kubernetes-preserve-unknown-fields` rejects fields it does not list (the API server prunes them
silently; here they are errors, since a misspelt field is a bug). CEL rules (`x-kubernetes-validations`)
and defaults are not evaluated.
"""

from __future__ import annotations

import copy
import subprocess
from functools import cache
from pathlib import Path

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
CRDS = K8S / "crds"
KUBE_VERSION = "1.33"  # the built-in schemas to check against (kubernetes-validate bundles many)


@cache
def crd_docs() -> tuple[dict, ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 2.3 MB of YAML
    return tuple(yaml.load(p.read_text(), Loader=loader) for p in sorted(CRDS.glob("*.yaml")))  # noqa: S506


def _strict(node):
    if isinstance(node, dict):
        node = {k: _strict(v) for k, v in node.items()}
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft4Validator:
    group, _, version = api_version.partition("/")
    for crd in crd_docs():
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            for v in crd["spec"]["versions"]:
                if v["name"] == version:
                    schema = _strict(copy.deepcopy(v["schema"]["openAPIV3Schema"]))
                    return jsonschema.Draft4Validator(schema)
    raise LookupError(f"no CRD in {CRDS} serves {kind} {api_version}")


def problems(obj: dict) -> list[str]:
    """Every validation problem of one object (empty when valid)."""
    api, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    if api.startswith("ray.io/"):
        v = crd_validator(api, kind)
        return [f"{kind}/{obj['metadata'].get('name')}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in v.iter_errors(obj)]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{kind}/{obj['metadata'].get('name')}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}"]
    return []


def render(overlay: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {overlay} failed: {out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def overlays() -> list[Path]:
    return sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
