"""A server replica tells the operator which step it serves: after every load, with its
pod's projected token (push.py), so the InferenceService's status.model.servedStep follows a
reload."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import commit, serving

import trainforge_contract as contract


def test_the_served_step_is_pushed_after_each_load(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[tuple[str, dict[str, Any]]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers["Authorization"], json.loads(body)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    token = tmp_path / "token"
    token.write_text("server-token")
    monkeypatch.setenv(
        contract.ENV_PROGRESS_URL, f"http://127.0.0.1:{endpoint.server_address[1]}/v1/progress"
    )
    monkeypatch.setenv(contract.ENV_PROGRESS_TOKEN_PATH, str(token))
    root = tmp_path / "ckpt"
    commit(trained / "step-00000002", root)

    def pushed(step: int) -> bool:
        return any(body == {"servedStep": step} for _, body in received)

    async def scenario() -> None:
        async with serving(root, reload_interval_seconds=0.1) as s:
            await s.wait_ready()
            for step in (2, 4):
                if step == 4:
                    await asyncio.to_thread(commit, trained / "step-00000004", root)
                deadline = time.monotonic() + 15
                while not pushed(step) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert pushed(step), received

    try:
        asyncio.run(scenario())
    finally:
        endpoint.shutdown()
    assert {auth for auth, _ in received} == {"Bearer server-token"}
