"""`inferencepool run --kubeconfig F`: kopf's own API calls use F, not whatever $KUBECONFIG names.

kopf logs in through the kubernetes client's default kubeconfig, which the client fixes at import from
$KUBECONFIG; a test that runs the operator with a ServiceAccount's kubeconfig as a flag would otherwise
check the Deployment writes against that account's RBAC but kopf's watches and status patches against
the admin's.
"""

from __future__ import annotations

import logging

import kopf
import pytest
import yaml

from inferencepool.operator import run


def kubeconfig(path, server: str, token: str) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    return str(path)


@pytest.fixture
def admin(tmp_path, monkeypatch):
    """$KUBECONFIG names an admin file, and the client took it as its default at import (as in a shell)."""
    from kubernetes.config import kube_config

    path = kubeconfig(tmp_path / "admin", "https://127.0.0.1:1", "admin-token")
    monkeypatch.setenv("KUBECONFIG", path)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", path)
    return path


def kopf_login():
    info = kopf.login_via_client(logger=logging.getLogger("test"), settings=kopf.OperatorSettings())
    return info.server, info.token


def test_kopf_logs_in_with_the_kubeconfig_flag(tmp_path, admin):
    run._load_kube_config(kubeconfig(tmp_path / "account", "https://127.0.0.1:2", "account-token"))
    assert kopf_login() == ("https://127.0.0.1:2", "account-token")


def test_without_the_flag_kopf_and_the_client_read_kubeconfig(admin):
    run._load_kube_config(None)
    assert kopf_login() == ("https://127.0.0.1:1", "admin-token")
