"""The kubeconfig examples for gateway users parse as kubeconfigs and say what they claim."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "kubeconfig-examples"


@pytest.mark.parametrize(
    ("name", "credential"),
    [
        ("gateway-token.yaml", "token"),
        ("gateway-client-certificate.yaml", "client-certificate"),
        ("gateway-exec-plugin.yaml", "exec"),
    ],
)
def test_gateway_user_examples(name: str, credential: str) -> None:
    from kubernetes.config.kube_config import KubeConfigLoader

    config = yaml.safe_load((EXAMPLES / name).read_text())
    loader = KubeConfigLoader(config_dict=config)
    context = loader.current_context["context"]
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    assert credential in user
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    assert cluster["server"].startswith("https://")
