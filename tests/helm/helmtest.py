"""Helpers of the chart tests: helm, rendering, the chart's RBAC rules, and a pass-through
proxy that records every API call the operator makes (so the tests compare the chart's
permissions with real calls, not with a hand-kept list)."""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import ssl
import subprocess
import tempfile
import threading
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from kubetest import REPO, Operator

CHART = REPO / "helm" / "trainforge"
# `helm template` otherwise assumes Kubernetes v1.20 (the binary is built without version
# ldflags), which the chart's kubeVersion range rejects. The test cluster runs 1.33.
KUBE_VERSION = "1.33.0"


def run_helm(
    helm: Path, *args: str, check: bool = True, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env_args = [f"--kubeconfig={kubeconfig}"] if kubeconfig else []
    with tempfile.TemporaryDirectory() as home:
        # A private helm home: no repositories or plugins of the machine leak in. HOME too:
        # without it helm writes its API discovery cache to .kube/cache in the current
        # directory (the repository).
        env = {
            "HOME": home,
            "KUBECACHEDIR": f"{home}/.kube/cache",
            "HELM_CACHE_HOME": f"{home}/cache",
            "HELM_CONFIG_HOME": f"{home}/config",
            "HELM_DATA_HOME": f"{home}/data",
            "PATH": "/usr/bin:/bin",
        }
        result = subprocess.run(
            [str(helm), *args, *env_args], capture_output=True, text=True, env=env, timeout=180
        )
    if check and result.returncode != 0:
        raise AssertionError(
            f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )
    return result


def values_args(values: dict[str, Any], tmp: Path) -> list[str]:
    path = tmp / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return [f"--values={path}"]


def render(
    helm: Path,
    values: dict[str, Any],
    tmp: Path,
    namespace: str = "trainforge",
    release: str = "tf",
) -> list[dict[str, Any]]:
    out = run_helm(
        helm,
        "template",
        release,
        str(CHART),
        f"--namespace={namespace}",
        f"--kube-version={KUBE_VERSION}",
        *values_args(values, tmp),
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def reconciles(operator: Operator) -> float:
    """trainforge_reconcile_total over both kinds, from the operator's /metrics."""
    url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("trainforge_reconcile_total{")
    )


def find(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# --- permissions ------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Permission:
    """One verb on one resource (sub-resource as "pods/status"), optionally one object name."""

    group: str
    resource: str
    verb: str
    name: str = ""

    def __str__(self) -> str:
        group = self.group or "core"
        return f"{self.verb} {group}/{self.resource}" + (f" ({self.name})" if self.name else "")


def granted(rules: list[dict[str, Any]]) -> set[Permission]:
    """The (group, resource, verb[, name]) tuples a list of RBAC rules grants."""
    out = set()
    for rule in rules:
        names = rule.get("resourceNames") or [""]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in names:
                        out.add(Permission(group, resource, verb, name))
    return out


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: str
    status: int

    def permissions(self) -> set[Permission]:
        """The RBAC permissions this request needs; none for discovery and other non-resource
        paths (allowed to every authenticated user)."""
        parts = [p for p in self.path.split("/") if p]
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, rest = parts[1], parts[3:]
        else:
            return set()
        if not rest:
            return set()
        if rest[0] == "namespaces" and len(rest) >= 3:
            rest = rest[2:]
        resource, name, sub = [*rest, "", ""][:3]
        resource = f"{resource}/{sub}" if sub else resource
        query = parse_qs(self.query)
        verb = {
            "GET": "get"
            if name
            else ("watch" if query.get("watch") in (["true"], ["1"]) else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }[self.method]
        needed = {Permission(group, resource, verb)}
        if self.method == "PATCH" and self.status == 201:
            # A server-side apply that created the object: the API server also checks create.
            needed.add(Permission(group, resource, "create"))
        return needed


class RecordingProxy:
    """Plain-HTTP loopback proxy to the API server that authenticates as a ServiceAccount
    (bearer token) and records every request: method, path, query and response status.

    Responses are streamed chunk by chunk, so watches work through it."""

    def __init__(self, server: str, ca_data: bytes, token: str) -> None:
        upstream = urlsplit(server)
        context = ssl.create_default_context(cadata=ca_data.decode())
        self.calls: list[Call] = []
        lock = threading.Lock()
        calls = self.calls

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:  # requests are recorded, not logged
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "authorization", "connection")
                }
                headers["Authorization"] = f"Bearer {token}"
                conn = http.client.HTTPSConnection(
                    upstream.hostname, upstream.port, context=context, timeout=330
                )
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    split = urlsplit(self.path)
                    with lock:
                        calls.append(Call(self.command, split.path, split.query, response.status))
                    self.send_response(response.status)
                    for key, value in response.getheaders():
                        if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(key, value)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    while chunk := response.read1(65536):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (
                    BrokenPipeError,
                    ConnectionResetError,
                    TimeoutError,
                    http.client.IncompleteRead,  # a watch cut when the test stops
                ):
                    self.close_connection = True
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def admin_server_and_ca(kubeconfig: Path) -> tuple[str, bytes]:
    """The API server URL and CA bundle of the test cluster's admin kubeconfig."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    else:
        ca = Path(cluster["certificate-authority"]).read_bytes()
    return cluster["server"], ca


def plain_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig for `server` without credentials (the proxy adds them)."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "proxy",
                "clusters": [{"name": "proxy", "cluster": {"server": server}}],
                "users": [{"name": "proxy", "user": {}}],
                "contexts": [{"name": "proxy", "context": {"cluster": "proxy", "user": "proxy"}}],
            }
        )
    )
    return path
