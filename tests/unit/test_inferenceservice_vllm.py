"""spec.server.runtime vllm: vLLM's OpenAI server over the causal-lm export, probed on
/health; the bundled server's settings do not leak into it; bad combinations are refused."""

from __future__ import annotations

from typing import Any

import pytest

from trainforge.api import InvalidSpec, parse_inference_service_spec
from trainforge.render.inferenceservice import InferenceRef, ModelMount, deployment
from trainforge.render.trainingjob import RenderSettings

REF = InferenceRef(name="chat", namespace="ml", uid="uid-1")
MOUNT = ModelMount("ckpt", "/checkpoints", "/checkpoints/runs/llama")
VLLM: dict[str, Any] = {
    "model": {"claimName": "ckpt", "path": "runs/llama", "name": "llama-ft"},
    "image": "vllm/vllm-openai:v0.11.0",
    "resources": {"gpus": 2, "requests": {"memory": "32Gi"}},
    "server": {"runtime": "vllm", "vllmArgs": ["--tensor-parallel-size", "2"]},
    "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
}


def server(spec: dict[str, Any]) -> dict[str, Any]:
    rendered = deployment(
        REF, parse_inference_service_spec(spec), MOUNT, RenderSettings(default_image="t:1")
    )
    (container,) = rendered["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_vllm_serves_the_export_under_the_model_name_on_the_server_port() -> None:
    c = server(VLLM)
    assert c["image"] == "vllm/vllm-openai:v0.11.0"
    assert c["command"] == [
        "python3", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/checkpoints/runs/llama/hf",
        "--served-model-name", "llama-ft",
        "--host", "0.0.0.0", "--port", "8080",
        "--tensor-parallel-size", "2",
    ]  # fmt: skip
    assert c["ports"][0]["containerPort"] == 8080
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["volumeMounts"][0] == {
        "name": "checkpoints",
        "mountPath": "/checkpoints",
        "readOnly": True,
    }


def test_vllm_is_probed_on_its_health_endpoint() -> None:
    c = server(VLLM)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # The startup probe covers the model load (vLLM listens only after it).
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_vllm_gets_the_users_env_and_offline_mode_not_the_bundled_servers() -> None:
    env = {v["name"]: v["value"] for v in server(VLLM)["env"]}
    assert env == {"HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "DEBUG"}


def test_the_default_runtime_is_the_bundled_server() -> None:
    spec = {"model": {"claimName": "ckpt"}}
    c = server(spec)
    assert c["command"] == ["python", "-m", "trainforge_trainer", "serve"]
    assert parse_inference_service_spec(spec).server.runtime == "trainforge"


@pytest.mark.parametrize(
    ("server_spec", "extra", "message"),
    [
        ({"runtime": "vllm"}, {}, "server.runtime vllm needs spec.image"),
        ({"vllmArgs": ["--dtype", "half"]}, {"image": "x"}, "applies only with server.runtime"),
        (
            {"runtime": "vllm", "quantize": "int8"},
            {"image": "x"},
            "with runtime vllm pass vLLM's own flags",
        ),
    ],
)
def test_bad_runtime_combinations_say_what_to_change(
    server_spec: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidSpec) as err:
        parse_inference_service_spec(
            {"model": {"claimName": "ckpt"}, "server": server_spec, **extra}
        )
    assert message in str(err.value)


def test_the_llm_examples_serve_the_llm_training_example() -> None:
    from pathlib import Path

    import yaml

    from trainforge.render.trainingjob import checkpoint_pvc_name

    examples = Path(__file__).parents[2] / "examples"
    job = yaml.safe_load((examples / "trainingjob-llm.yaml").read_text())
    bundled = yaml.safe_load((examples / "inferenceservice-llm.yaml").read_text())
    vllm = yaml.safe_load((examples / "inferenceservice-vllm.yaml").read_text())
    name = job["metadata"]["name"]
    assert bundled["spec"]["model"]["fromTrainingJob"] == name
    assert vllm["spec"]["model"]["claimName"] == checkpoint_pvc_name(name)
    # The export lands where the vllm runtime looks: `hf` in the checkpoint directory.
    assert "path" not in job["spec"]["trainer"].get("export", {})
