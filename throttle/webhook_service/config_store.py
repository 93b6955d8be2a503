"""Where the config API keeps policies: PostgreSQL locally, ThrottlePolicy resources in a cluster.

Both backends answer the same questions (put, get, find by action, list, delete, pause or
resume — the console's); neither writes
Redis rate parameters itself except through the engine's one `reconcile` function:
- `LocalConfigStore` stores the spec in the `policies` table, then applies it with `reconcile`
  (and `retire` on delete), exactly as the local manifest reader does.
- `ClusterConfigStore` creates or patches the `ThrottlePolicy` resource; the operator, the only
  writer of Redis parameters in a cluster, reconciles it. The Kubernetes client is synchronous,
  so its calls run in a worker thread, off the event loop.

Identity is (portal id, policy name). A portal may have at most one policy per action id, so
resolution (`portal + action → policy`) is never ambiguous; a second one is
`ActionAlreadyCovered`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from throttle.engine.manifests import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ManifestError,
    policy_from_resource,
)
from throttle.engine.policy import Policy

PORTAL_LABEL = "throttle.dev/portal"


class ActionAlreadyCovered(Exception):
    """Another policy of the portal already covers this action."""


class ConfigStoreUnavailable(Exception):
    """The backing store (PostgreSQL or the Kubernetes API) did not answer; nothing changed."""


class PolicyRejected(Exception):
    """The Kubernetes API server refused the resource (its schema or CEL rules); nothing changed."""


@dataclass(frozen=True)
class PutResult:
    policy: Policy
    created: bool


class ConfigStore(Protocol):
    async def put(self, policy: Policy) -> PutResult: ...

    async def get(self, portal_id: int, name: str) -> Policy | None: ...

    async def find(self, portal_id: int, action_id: int) -> Policy | None: ...

    async def list(self, portal_id: int | None = None) -> list[Policy]: ...

    async def delete(self, portal_id: int, name: str) -> bool: ...

    async def set_paused(self, portal_id: int, name: str, paused: bool) -> Policy | None: ...


def paused_copy(policy: Policy, paused: bool) -> Policy:
    return Policy.model_validate({**policy.spec(), "paused": paused})


Apply = Callable[[Policy], Awaitable[Any]]
Retire = Callable[[Policy], Awaitable[Any]]
ApplyAwaited = Callable[[list[Policy]], Awaitable[Any]]


def _check_conflict(policy: Policy, existing: list[Policy]) -> None:
    if policy.action_id is None:
        return
    for other in existing:
        if other.name != policy.name and other.action_id == policy.action_id:
            raise ActionAlreadyCovered(
                f"policy {other.name!r} of portal {policy.portal_id} already covers action "
                f"{policy.action_id}; change or delete it first"
            )


# --- local: PostgreSQL + reconcile ------------------------------------------------------------


class LocalConfigStore:
    """Policies in the `policies` table; every change is applied to Redis through `reconcile`.

    The Redis write happens inside the database transaction: if Redis refuses, the row is rolled
    back and the caller gets a 503 with nothing changed. `resync` re-applies every stored policy
    (idempotent), which restores Redis' copy after Redis lost its data, and writes the
    parameters queued executions of the stored policies await (`apply_awaited`).
    """

    def __init__(
        self, pool: Any, apply: Apply, retire: Retire, apply_awaited: ApplyAwaited
    ) -> None:
        self.pool = pool
        self.apply = apply
        self.retire = retire
        self.apply_awaited = apply_awaited

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        import asyncpg
        from redis.exceptions import RedisError

        if self.pool is None:
            raise ConfigStoreUnavailable("DATABASE_URL is not set: the local policy store needs it")
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except asyncpg.UndefinedTableError:
            raise ConfigStoreUnavailable(
                "the policies table is missing: run `throttle migrate`"
            ) from None
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise ConfigStoreUnavailable(
                f"PostgreSQL is unavailable ({type(exc).__name__})"
            ) from None
        except RedisError as exc:
            raise ConfigStoreUnavailable(
                f"Redis is unavailable ({type(exc).__name__}); nothing was changed"
            ) from None

    @staticmethod
    def _policy(row: Any) -> Policy:
        spec = row["spec"]
        data = json.loads(spec) if isinstance(spec, str) else dict(spec)
        data["name"] = row["name"]
        data["portalId"] = row["portal_id"]
        return Policy.model_validate(data)

    async def put(self, policy: Policy) -> PutResult:
        spec = json.dumps(policy.spec())
        async with self._connection() as conn, conn.transaction():
            # Serialise writers of one portal so the one-policy-per-action check holds.
            await conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", policy.portal_id)
            rows = await conn.fetch(
                "SELECT name, portal_id, spec FROM policies WHERE portal_id = $1",
                policy.portal_id,
            )
            existing = [self._policy(r) for r in rows]
            _check_conflict(policy, existing)
            created = all(p.name != policy.name for p in existing)
            await conn.execute(
                """
                INSERT INTO policies (name, portal_id, action_id, spec)
                VALUES ($1, $2, $3, $4::jsonb)
                ON CONFLICT (portal_id, name) DO UPDATE
                   SET action_id = EXCLUDED.action_id, spec = EXCLUDED.spec, updated_at = now()
                """,
                policy.name,
                policy.portal_id,
                policy.action_id,
                spec,
            )
            await self.apply(policy)
        return PutResult(policy, created)

    async def _fetch(self, query: str, *args: Any) -> list[Policy]:
        async with self._connection() as conn:
            rows = await conn.fetch(query, *args)
        return [self._policy(r) for r in rows]

    async def get(self, portal_id: int, name: str) -> Policy | None:
        found = await self._fetch(
            "SELECT name, portal_id, spec FROM policies WHERE portal_id = $1 AND name = $2",
            portal_id,
            name,
        )
        return found[0] if found else None

    async def find(self, portal_id: int, action_id: int) -> Policy | None:
        found = await self._fetch(
            "SELECT name, portal_id, spec FROM policies WHERE portal_id = $1 AND action_id = $2"
            " ORDER BY name LIMIT 1",
            portal_id,
            action_id,
        )
        return found[0] if found else None

    async def list(self, portal_id: int | None = None) -> list[Policy]:
        if portal_id is None:
            return await self._fetch(
                "SELECT name, portal_id, spec FROM policies ORDER BY portal_id, name"
            )
        return await self._fetch(
            "SELECT name, portal_id, spec FROM policies WHERE portal_id = $1 ORDER BY name",
            portal_id,
        )

    async def delete(self, portal_id: int, name: str) -> bool:
        async with self._connection() as conn, conn.transaction():
            row = await conn.fetchrow(
                "DELETE FROM policies WHERE portal_id = $1 AND name = $2"
                " RETURNING name, portal_id, spec",
                portal_id,
                name,
            )
            if row is None:
                return False
            await self.retire(self._policy(row))
        return True

    async def set_paused(self, portal_id: int, name: str, paused: bool) -> Policy | None:
        """The stored policy paused or resumed (None: no such policy); nothing else changes."""
        policy = await self.get(portal_id, name)
        if policy is None:
            return None
        return (await self.put(paused_copy(policy, paused))).policy

    async def resync(self) -> int:
        """Apply every stored policy again (no-op when Redis already holds them), then what
        their queued executions await."""
        policies = await self.list()
        for policy in policies:
            await self.apply(policy)
        await self.apply_awaited(policies)
        return len(policies)


# --- cluster: ThrottlePolicy resources ----------------------------------------------------------


def _kube_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message") or "rejected by the API server")
    except (TypeError, ValueError, AttributeError):
        return "rejected by the API server"


def resource_name(portal_id: int, name: str) -> str:
    """The object name of a portal's policy: unique per namespace, a valid DNS-1123 subdomain.

    Policy names repeat across portals (every portal may have a `default`), so the portal id is
    part of the object name; the policy's own name is `spec.name`.
    """
    base = f"p{portal_id}-{name}"
    return re.sub(r"[^a-z0-9.-]", "-", base)[:253]


def resource_for(policy: Policy) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": resource_name(policy.portal_id, policy.name),
            "labels": {PORTAL_LABEL: str(policy.portal_id)},
        },
        "spec": policy.spec(),
    }


class ClusterConfigStore:
    """Policies as ThrottlePolicy resources in one namespace (the operator applies them).

    Resources made with kubectl are found too (any object name): the policy's identity is its
    portal and `spec.name`, not the object name, which only new resources choose here.
    """

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client as k8s

        self.api = k8s.CustomObjectsApi(api_client)
        self.namespace = namespace

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return await asyncio.to_thread(
                fn, GROUP, VERSION, self.namespace, PLURAL, *args, **kwargs
            )
        except ApiException as exc:
            if exc.status in (404, 409):
                raise  # the caller decides what "not there" / "already there" means
            if exc.status == 422:
                raise PolicyRejected(_kube_message(exc)) from None
            raise ConfigStoreUnavailable(f"the Kubernetes API answered {exc.status}") from None
        except (HTTPError, OSError) as exc:
            raise ConfigStoreUnavailable(
                f"the Kubernetes API is unreachable ({type(exc).__name__})"
            ) from None

    async def _objects(self, portal_id: int | None) -> list[tuple[dict[str, Any], Policy]]:
        """(resource, policy) of every valid resource, of one portal if given."""
        answer = await self._call(self.api.list_namespaced_custom_object)
        found = []
        for obj in answer.get("items") or []:
            try:
                policy = policy_from_resource(obj)
            except ManifestError:
                continue  # the operator reports invalid resources in their status
            if portal_id is None or policy.portal_id == portal_id:
                found.append((obj, policy))
        return sorted(found, key=lambda item: (item[1].portal_id, item[1].name))

    async def _object_name(self, portal_id: int, name: str) -> str | None:
        for obj, policy in await self._objects(portal_id):
            if policy.name == name:
                return str(obj["metadata"]["name"])
        return None

    async def put(self, policy: Policy) -> PutResult:
        from kubernetes.client.exceptions import ApiException

        existing = await self._objects(policy.portal_id)
        _check_conflict(policy, [p for _, p in existing])
        current = next((o for o, p in existing if p.name == policy.name), None)
        body = resource_for(policy)
        if current is None:
            try:
                await self._call(self.api.create_namespaced_custom_object, body)
                return PutResult(policy, True)
            except ApiException as exc:
                if exc.status != 409:
                    raise
            current = body
        spec = dict(body["spec"])
        if "name" not in (current.get("spec") or {}):
            # Named by metadata.name (made with kubectl); the CRD forbids adding spec.name.
            spec.pop("name", None)
        # Replace the whole spec (a merge patch would keep fields the caller dropped), but keep
        # what only the operator reads (onDelete) as the resource had it.
        on_delete = (current.get("spec") or {}).get("onDelete")
        if on_delete is not None:
            spec["onDelete"] = on_delete
        patch = [{"op": "replace", "path": "/spec", "value": spec}]
        await self._call(
            self.api.patch_namespaced_custom_object,
            current["metadata"]["name"],
            patch,
            _content_type="application/json-patch+json",
        )
        return PutResult(policy, False)

    async def get(self, portal_id: int, name: str) -> Policy | None:
        for _, policy in await self._objects(portal_id):
            if policy.name == name:
                return policy
        return None

    async def find(self, portal_id: int, action_id: int) -> Policy | None:
        for _, policy in await self._objects(portal_id):
            if policy.action_id == action_id:
                return policy
        return None

    async def list(self, portal_id: int | None = None) -> list[Policy]:
        return [policy for _, policy in await self._objects(portal_id)]

    async def set_paused(self, portal_id: int, name: str, paused: bool) -> Policy | None:
        """Patch only `spec.paused` (a merge patch): whatever else the resource says stays."""
        for obj, policy in await self._objects(portal_id):
            if policy.name == name:
                patch = {"spec": {"paused": paused}}
                await self._call(
                    self.api.patch_namespaced_custom_object,
                    obj["metadata"]["name"],
                    patch,
                    _content_type="application/merge-patch+json",
                )
                return paused_copy(policy, paused)
        return None

    async def delete(self, portal_id: int, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        object_name = await self._object_name(portal_id, name)
        if object_name is None:
            return False
        try:
            await self._call(self.api.delete_namespaced_custom_object, object_name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True
