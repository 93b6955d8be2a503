"""How the operator reaches the Kubernetes API: in the cluster, or from a kubeconfig file.

Both kopf and the Lease client must act as the same identity, so both are built from one
`kubernetes.client.Configuration`, loaded per operator instance (never the library's global
default): tests run several operators, each as its own ServiceAccount, in one process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config


def client_configuration(kubeconfig: Path | str | None = None) -> Any:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG/~/.kube)."""
    configuration = k8s.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration
        except k8s_config.ConfigException:
            pass
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig) if kubeconfig else None, client_configuration=configuration
    )
    return configuration


def api_client(configuration: Any) -> Any:
    return k8s.ApiClient(configuration)


def connection_info(configuration: Any) -> kopf.ConnectionInfo:
    """kopf's view of the same credentials (what kopf's own login_via_client extracts)."""
    header = configuration.get_api_key_with_prefix(
        "BearerToken"
    ) or configuration.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )
