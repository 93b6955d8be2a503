"""ThrottlePolicy manifests (the YAML `kubectl apply` takes) turned into `Policy` objects.

The same files drive a cluster (through the API server and the operator) and local runs (the
local reconciler, the demo, the webhook's local config store), so this module applies what the
API server would: the CRD's defaults come from the Policy model, and the CRD's cross-field CEL
rules are repeated here (`crd_rule_errors`) so a manifest refused by a cluster is refused locally
with the same message.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast

import yaml
from pydantic import ValidationError

from throttle.engine.durations import parse_duration
from throttle.engine.inline import PREFIX as INLINE_PREFIX
from throttle.engine.policy import Policy, policy_errors

GROUP = "throttle.dev"
VERSION = "v1beta1"
"""The CRD's storage version: the one the operator watches and the config API writes."""
API_VERSION = f"{GROUP}/{VERSION}"
SERVED_API_VERSIONS = (API_VERSION, f"{GROUP}/v1alpha1")
"""Every version the CRD serves (deploy/crds/throttlepolicies.yaml), with the same schema:
v1alpha1 is deprecated but a manifest of it still means the same policy (locally too)."""
KIND = "ThrottlePolicy"
PLURAL = "throttlepolicies"
NAME_ANNOTATION = "throttle.dev/policy-name"
"""Older spelling of `spec.name` (the config API's resources carry it); `spec.name` wins."""

OnDelete = Literal["Drain", "Succeed", "Fail"]
ON_DELETE_MODES: tuple[OnDelete, ...] = ("Drain", "Succeed", "Fail")
DEFAULT_ON_DELETE: OnDelete = "Drain"

_OPERATOR_ONLY = ("onDelete",)
"""Spec fields the operator acts on that are not part of the engine's Policy."""

FieldErrors = list[tuple[str, str]]


class ManifestError(ValueError):
    """A manifest that cannot become a Policy; `errors` names each field (`spec.rate.burst`)."""

    def __init__(self, source: str, errors: FieldErrors) -> None:
        self.source = source
        self.errors = errors
        detail = "; ".join(f"{path}: {message}" for path, message in errors)
        super().__init__(f"{source}: {detail}")


def policy_name(obj: Mapping[str, Any]) -> str | None:
    """The engine name of a resource: `spec.name`, else the annotation, else `metadata.name`."""
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    annotations = metadata.get("annotations") or {}
    name = spec.get("name") or annotations.get(NAME_ANNOTATION) or metadata.get("name")
    return str(name) if name else None


def on_delete_mode(spec: Mapping[str, Any]) -> OnDelete:
    mode = spec.get("onDelete") or DEFAULT_ON_DELETE
    return cast(OnDelete, mode) if mode in ON_DELETE_MODES else DEFAULT_ON_DELETE


def _at_most_a_day(period: Any) -> bool:
    try:
        return parse_duration(period if period is not None else "1m") <= timedelta(days=1)
    except ValueError:
        return False  # the Policy model reports the period itself


def crd_rule_errors(spec: Mapping[str, Any]) -> FieldErrors:
    """The CRD's cross-field rules (x-kubernetes-validations), for places without an API server."""
    errors: FieldErrors = []
    raw_rate = spec.get("rate")
    rate: Mapping[str, Any] = raw_rate if isinstance(raw_rate, Mapping) else {}
    limit, burst = rate.get("limit"), rate.get("burst", 0)
    if isinstance(limit, int) and isinstance(burst, int) and burst > limit:
        errors.append(("spec.rate.burst", "rate.burst must not exceed rate.limit"))
    inline = spec.get("inline")
    ceiling = inline.get("maxRate") if isinstance(inline, Mapping) else None
    if isinstance(ceiling, Mapping):
        max_limit, max_burst = ceiling.get("limit"), ceiling.get("burst", 0)
        if isinstance(max_limit, int) and isinstance(max_burst, int) and max_burst > max_limit:
            errors.append(
                ("spec.inline.maxRate.burst", "inline.maxRate.burst must not exceed its limit")
            )
    cap = spec.get("dailyCap")
    if isinstance(cap, Mapping) and isinstance(limit, int) and _at_most_a_day(rate.get("period")):
        cap_limit = cap.get("limit")
        if isinstance(cap_limit, int) and cap_limit < limit:
            errors.append(("spec.dailyCap.limit", "dailyCap.limit must be at least rate.limit"))
    mode = spec.get("onDelete")
    if mode is not None and mode not in ON_DELETE_MODES:
        errors.append(
            ("spec.onDelete", f"Unsupported value {mode!r}: one of {', '.join(ON_DELETE_MODES)}")
        )
    return errors


def policy_from_spec(name: str | None, spec: Mapping[str, Any], source: str = "spec") -> Policy:
    """Validate a ThrottlePolicy spec as the engine's Policy (raises ManifestError)."""
    errors = crd_rule_errors(spec)
    if name is not None and name.startswith(INLINE_PREFIX):
        errors.append(("name", f"names starting with {INLINE_PREFIX!r} are the inline queues'"))
    data = {k: v for k, v in spec.items() if k not in _OPERATOR_ONLY}
    data["name"] = name
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        errors += [
            (f"spec.{path}" if path != "name" else "name", m) for path, m in policy_errors(exc)
        ]
        raise ManifestError(source, errors) from None
    if errors:
        raise ManifestError(source, errors)
    return policy


def policy_from_resource(obj: Mapping[str, Any], source: str | None = None) -> Policy:
    """The Policy a ThrottlePolicy object (dict, as kopf or kubectl gives it) describes."""
    metadata = obj.get("metadata") or {}
    source = source or f"ThrottlePolicy {metadata.get('namespace') or '-'}/{metadata.get('name')}"
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise ManifestError(source, [("spec", "Required value")])
    return policy_from_spec(policy_name(obj), spec, source)


@dataclass(frozen=True)
class Manifest:
    """One ThrottlePolicy document of a file: its Policy, or why it has none."""

    source: str
    """`path#index`, for messages."""
    resource: Mapping[str, Any] = field(repr=False)
    policy: Policy | None
    on_delete: OnDelete
    errors: FieldErrors

    @property
    def key(self) -> str | None:
        return self.policy.key if self.policy else None


def _documents(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(encoding="utf-8") as handle:
        yield from enumerate(yaml.safe_load_all(handle))


def parse_manifest(doc: Any, source: str) -> Manifest | None:
    """A Manifest for a ThrottlePolicy document; None for other kinds (ignored, like kubectl -l)."""
    if not isinstance(doc, Mapping) or doc.get("kind") != KIND:
        return None
    if doc.get("apiVersion") not in SERVED_API_VERSIONS:
        served = " or ".join(SERVED_API_VERSIONS)
        return Manifest(
            source,
            doc,
            None,
            DEFAULT_ON_DELETE,
            [("apiVersion", f"must be {served}, not {doc.get('apiVersion')!r}")],
        )
    raw_spec = doc.get("spec")
    spec: Mapping[str, Any] = raw_spec if isinstance(raw_spec, Mapping) else {}
    try:
        policy = policy_from_resource(doc, source)
    except ManifestError as exc:
        return Manifest(source, doc, None, on_delete_mode(spec), exc.errors)
    return Manifest(source, doc, policy, on_delete_mode(spec), [])


def manifest_files(folder: Path) -> list[Path]:
    """The folder's `*.yaml` / `*.yml` files (not its subfolders), in name order."""
    if folder.is_file():
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".yaml", ".yml"))


def load_file(path: Path) -> list[Manifest]:
    """Every ThrottlePolicy in one file; a file that is not YAML yields one failed Manifest."""
    try:
        docs = list(_documents(path))
    except (OSError, yaml.YAMLError) as exc:
        return [Manifest(str(path), {}, None, DEFAULT_ON_DELETE, [("file", str(exc))])]
    found = []
    for index, doc in enumerate(d for _, d in docs):
        manifest = parse_manifest(doc, f"{path}#{index}" if len(docs) > 1 else str(path))
        if manifest is not None:
            found.append(manifest)
    return found


def load_folder(folder: Path) -> list[Manifest]:
    """Every ThrottlePolicy under `folder` (or in one file); duplicates of a policy are errors."""
    manifests = [m for path in manifest_files(folder) for m in load_file(path)]
    return mark_duplicates(manifests)


def mark_duplicates(manifests: Iterable[Manifest]) -> list[Manifest]:
    """The second manifest of one `portal:name` loses (files are read in name order)."""
    seen: dict[str, str] = {}
    out = []
    for m in manifests:
        if m.policy is not None and m.policy.key in seen:
            out.append(
                Manifest(
                    m.source,
                    m.resource,
                    None,
                    m.on_delete,
                    [
                        (
                            "metadata.name",
                            f"policy {m.policy.key} is already defined in {seen[m.policy.key]}",
                        )
                    ],
                )
            )
            continue
        if m.policy is not None:
            seen[m.policy.key] = m.source
        out.append(m)
    return out


def load_policies(folder: Path) -> list[Policy]:
    """The valid policies of a folder; raises ManifestError for the first invalid one.

    For callers that want all-or-nothing (the demo, the config API's seeding).
    """
    policies = []
    for m in load_folder(folder):
        if m.policy is None:
            raise ManifestError(m.source, m.errors)
        policies.append(m.policy)
    return policies
