"""The manifests in k8s/ as the tests read them: rendered by `kubectl kustomize`, through the
base or through an overlay shaped like the one init.sh writes, and the strict JSON schemas the
custom resources (CRDs, which kubernetes-validate does not know) are checked against.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO_ROOT

K8S_DIR = REPO_ROOT / "k8s"
K8S_VERSIONS = ["1.31", "1.32", "1.33", "1.34", "1.35", "1.36"]

STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
# metadata.name of any object: an RFC 1123 subdomain's label form, as Kubernetes checks it.
_NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}


def render(directory: Path) -> list[dict[str, Any]]:
    """What `kubectl kustomize directory` renders, one dict a document."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the kustomize base offline)")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def json_patch(kind: str, name: str, operations: list[dict[str, Any]]) -> dict[str, Any]:
    """A kustomize patch applying RFC 6902 ``operations`` to the object ``kind``/``name``."""
    return {"target": {"kind": kind, "name": name}, "patch": yaml.safe_dump(operations)}


def render_overlay(
    directory: Path,
    components: Sequence[str],
    patches: Sequence[dict[str, Any]] = (),
    **fields: Any,
) -> list[dict[str, Any]]:
    """Write and render a kustomization in ``directory`` with k8s/ as its resource, the base's
    ``components`` (paths below k8s/components/), ``patches`` and any further ``fields``."""
    # kustomize takes only relative paths to other kustomizations.
    base = os.path.relpath(K8S_DIR, directory)
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "components": [f"{base}/components/{component}" for component in components],
        "patches": list(patches),
        **fields,
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    return render(directory)


def strict_object(properties: dict[str, Any], required: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON schema object that refuses unknown fields, as kubernetes-validate --strict does."""
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = list(required)
    return schema


def custom_resource_schema(
    api_version: str, kind: str, spec: dict[str, Any], *, namespaced: bool
) -> dict[str, Any]:
    """The strict schema of a custom resource: the Kubernetes envelope (apiVersion, kind, a
    metadata with a valid name, labels, annotations and, for a namespaced kind, a namespace)
    around the ``spec`` schema of the kind's own fields."""
    metadata = {"name": _NAME, "labels": STRINGS, "annotations": STRINGS}
    if namespaced:
        metadata["namespace"] = {"type": "string"}
    return strict_object(
        {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": strict_object(metadata, required=["name"]),
            "spec": spec,
        },
        required=["apiVersion", "kind", "metadata", "spec"],
    )
