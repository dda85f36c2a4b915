"""The HTTP server: OIP V2 REST routes, metrics, hot-reload watcher and graceful drain.

Routes (model routes also under /v2/models/{name}/versions/{version}/...):

    GET  /v2/health/live          200 while the process serves HTTP and its checkpoint
                                  watcher runs; 503 once the watcher has died (restart me)
    GET  /v2/health/ready         200 once a checkpoint is loaded; 503 before and when draining
    GET  /v2                      server metadata
    GET  /v2/models/{name}        model metadata (served step in versions and parameters)
    GET  /v2/models/{name}/ready  as /v2/health/ready, for this model
    POST /v2/models/{name}/infer  inference
    GET  /metrics                 Prometheus text
    /v1/models, /v1/completions, /v1/chat/completions   OpenAI-compatible, for causal-lm
                                  checkpoints (openai_api.py)

Every error is JSON `{"error": "..."}` (the HTTP parser's own errors too): 4xx for the
client's mistakes, 503 while not ready. Inference speaks JSON and the binary tensor data
extension (Inference-Header-Content-Length), as the Triton and KServe clients send it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from importlib import metadata
from typing import Any

import numpy as np
import torch
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

import trainforge_contract as contract
from trainforge_trainer import logs
from trainforge_trainer.push import ProgressPusher
from trainforge_trainer.serve import protocol
from trainforge_trainer.serve.batcher import DynamicBatcher
from trainforge_trainer.serve.metrics import ServeMetrics
from trainforge_trainer.serve.model_store import LOAD_ERRORS, ModelStore, ServedModel, describe
from trainforge_trainer.serve.openai_api import OpenAiRoutes
from trainforge_trainer.serve.settings import ServeSettings

# In-flight requests get this long to finish once the server stops listening.
SHUTDOWN_TIMEOUT_SECONDS = 20.0
# Before the first checkpoint is loaded, look for one this often (whatever the reload interval).
FIRST_LOAD_POLL_SECONDS = 1.0

# The binary tensor data extension: the length of the JSON part that starts the body.
HEADER_LENGTH = "Inference-Header-Content-Length"
# No NaN/Infinity on the wire: they are not JSON, and clients' parsers refuse them.
_dumps = functools.partial(json.dumps, allow_nan=False)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class _JsonErrorHandler(RequestHandler):
    """aiohttp's connection handler, answering its parser's errors (a header too large, a
    bad Content-Length, ...) in the server's JSON error format instead of plain text."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; refuses if already sent
        text = message if status != 500 and message else HTTPStatus(status).phrase
        reply = _error(status, f"bad HTTP request: {text}" if status < 500 else text)
        reply.force_close()
        return reply


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no hook for the parser's error replies: swap in the handler class.
        server.__class__ = _JsonErrorServer
        return server


def _server_version() -> str:
    try:
        return metadata.version("trainforge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


# A replica re-sends its served step this often even when unchanged, so a restarted or newly
# elected operator learns it again.
SERVED_STEP_REPEAT_SECONDS = 60.0


class InferenceServer:
    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServeMetrics(settings.max_batch_size)
        self.store = ModelStore(
            settings.checkpoint_dir,
            settings.quantize,
            resolve_device(settings.device),
            on_loaded=self._on_loaded,
            on_failed=lambda: self.metrics.reloads.labels("failed").inc(),
            gate=(settings.reload_metric, settings.reload_mode) if settings.reload_metric else None,
            on_skipped=self._on_skipped,
        )
        self.batcher = DynamicBatcher(
            self._run_batch,
            settings.max_batch_size,
            settings.max_batch_delay_ms / 1000,
            observe=self._on_batch,
            thread_setup=self._limit_torch_threads,
        )
        self.openai = OpenAiRoutes(self)
        self.draining = False
        self.in_flight = 0
        # The step this replica serves, pushed to the operator for the InferenceService's
        # status.model.servedStep (push.py; only when the operator rendered the URL).
        self._pusher = ProgressPusher.from_env(
            os.environ, self._served, repeat=SERVED_STEP_REPEAT_SECONDS
        )
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._watcher: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> int:
        """Listen (live at once, ready after the first load); return the bound port."""
        # In-flight requests were awaited by shutdown() already (a body gets at most the
        # body timeout): what aiohttp's cleanup still finds is idle keep-alive connections.
        self._runner = _Runner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        self.batcher.start()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="reload")
        self._watcher.add_done_callback(self._on_watcher_done)
        self.metrics.watcher_up.set(1)
        logs.event(
            "serving",
            host=self.settings.host,
            port=self.port,
            model=self.settings.model_name,
            checkpoint_dir=str(self.settings.checkpoint_dir),
            max_batch_size=self.settings.max_batch_size,
            max_batch_delay_ms=self.settings.max_batch_delay_ms,
            quantize=self.settings.quantize,
            device=str(self.store.device),
        )
        return self.port

    async def shutdown(self, drain_seconds: float) -> None:
        """Fail readiness, keep answering `drain_seconds`, stop listening, finish in-flight."""
        self.draining = True
        self.metrics.ready.set(0)
        logs.event("draining", seconds=drain_seconds, in_flight=self.in_flight)
        await asyncio.sleep(drain_seconds)
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, *LOAD_ERRORS):
                await self._watcher
        if self._runner is not None:
            for site in self._runner.sites:
                await site.stop()  # no new connections
            # aiohttp's own shutdown drops a request whose body is still arriving, so wait
            # for every started inference here first.
            deadline = time.monotonic() + SHUTDOWN_TIMEOUT_SECONDS
            while self.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            await self._runner.cleanup()
        await self.batcher.stop()
        await self.openai.generator.stop()
        logs.event("stopped")

    async def _watch(self) -> None:
        interval = self.settings.reload_interval_seconds
        while True:
            try:
                await asyncio.to_thread(self.store.check)
            except LOAD_ERRORS as exc:  # an unreadable volume must not stop future polls
                logs.error("checkpoint_poll_failed", error=repr(exc))
            if self.store.current is None:
                await asyncio.sleep(FIRST_LOAD_POLL_SECONDS)
            elif interval == 0:
                return
            else:
                await asyncio.sleep(interval)

    def _watcher_failure(self) -> str | None:
        """Why the checkpoint watcher stopped, if it died (a bug): the liveness probe says so."""
        watcher = self._watcher
        if watcher is None or not watcher.done() or watcher.cancelled():
            return None
        exc = watcher.exception()
        return None if exc is None else f"the checkpoint watcher stopped: {exc!r}"

    # --- callbacks ------------------------------------------------------------------------

    def _on_watcher_done(self, watcher: asyncio.Task[None]) -> None:
        failure = self._watcher_failure()
        if failure is not None:
            self.metrics.watcher_up.set(0)
            logs.error("reload_watcher_stopped", error=failure)

    def _served(self) -> dict[str, Any]:
        current = self.store.current
        if current is None:
            return {}
        record = {contract.SERVED_STEP_KEY: current.step}
        if self.store.skipped_step is not None:
            record[contract.SKIPPED_STEP_KEY] = self.store.skipped_step
        return record

    def _on_skipped(self, step: int) -> None:
        self.metrics.reloads.labels("skipped").inc()
        self.metrics.skipped_step.set(step)
        if self._pusher is not None:
            self._pusher.wake()

    def _on_loaded(self, served: ServedModel, seconds: float) -> None:
        if self._pusher is not None:
            self._pusher.wake()
        self.metrics.reloads.labels("loaded").inc()
        self.metrics.load_seconds.observe(seconds)
        self.metrics.model_step.set(served.step)
        self.metrics.ready.set(0 if self.draining else 1)

    def _on_batch(self, rows: int, waits: list[float], seconds: float) -> None:
        self.metrics.batch_size.observe(rows)
        self.metrics.compute_seconds.observe(seconds)
        for wait in waits:
            self.metrics.queue_seconds.observe(wait)

    def _limit_torch_threads(self) -> None:
        # OpenMP's thread count is per calling thread: set on the inference thread itself,
        # or its forwards start a team of one spinning thread per core.
        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)

    def _run_batch(self, merged: np.ndarray) -> tuple[np.ndarray, ServedModel]:
        # Read the reference once: the whole batch runs on one model even if a reload lands.
        served = self.store.current
        if served is None:
            raise RuntimeError("no model loaded")
        return served.run(merged), served

    # --- HTTP -----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_request_bytes, middlewares=[self._middleware]
        )
        model = "/v2/models/{name}"
        versioned = "/v2/models/{name}/versions/{version}"
        # The probe paths are the operator's (contract): the Deployment it renders probes them.
        app.router.add_get(contract.SERVE_PATH_LIVE, self._live)
        app.router.add_get(contract.SERVE_PATH_READY, self._ready)
        app.router.add_get("/v2", self._server_metadata)
        app.router.add_get(contract.SERVE_PATH_METRICS, self._metrics)
        for prefix in (model, versioned):
            app.router.add_get(prefix, self._model_metadata)
            app.router.add_get(prefix + "/ready", self._model_ready)
            app.router.add_post(prefix + "/infer", self._infer)
        self.openai.add_to(app)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            response = await handler(request)
        except protocol.ProtocolError as exc:
            response = _error(exc.status, exc.message)
            if exc.status == 408:
                response.force_close()  # the rest of a late body must not read as a request
        except web.HTTPException as exc:  # aiohttp's own: no route (404), wrong method (405)
            response = _error(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except Exception as exc:
            logs.error("request_failed", route=route, error=repr(exc))
            response = _error(500, f"internal error: {exc}")
        self.metrics.requests.labels(route, str(response.status)).inc()
        return response

    def _not_ready_reason(self) -> str | None:
        if self.draining:
            return "the server is shutting down"
        if self.store.current is None:
            return (
                f"model {self.settings.model_name!r} is not loaded yet: waiting for a "
                f"committed checkpoint in {str(self.settings.checkpoint_dir)!r}"
            )
        return None

    def _model(self, request: web.Request) -> ServedModel:
        """The served model the URL names, or the 404/503 that says why not."""
        name = request.match_info["name"]
        if name != self.settings.model_name:
            raise protocol.ProtocolError(
                f"unknown model {name!r}; this server serves {self.settings.model_name!r}", 404
            )
        served = self.store.current
        if served is None:
            # While draining a loaded model keeps answering: only readiness fails then.
            raise protocol.ProtocolError(self._not_ready_reason() or "no model loaded", 503)
        version = request.match_info.get("version")
        if version is not None and version != str(served.step):
            raise protocol.ProtocolError(
                f"unknown version {version!r} of model {name!r}; serving version {served.step}",
                404,
            )
        return served

    async def _live(self, _request: web.Request) -> web.Response:
        failure = self._watcher_failure()
        if failure is not None:
            # Never reloading again would go unnoticed: let the kubelet restart the server.
            return web.json_response({"live": False, "error": failure}, status=503)
        return web.json_response({"live": True})

    async def _ready(self, _request: web.Request) -> web.Response:
        reason = self._not_ready_reason()
        if reason is not None:
            return web.json_response({"ready": False, "error": reason}, status=503)
        return web.json_response({"ready": True})

    async def _server_metadata(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": "trainforge",
                "version": _server_version(),
                "extensions": ["binary_tensor_data"],
            }
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.exposition(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def _model_metadata(self, request: web.Request) -> web.Response:
        served = self._model(request)
        return web.json_response(
            protocol.model_metadata(
                self.settings.model_name,
                str(served.step),
                served.signature,
                describe(served, self.settings.quantize),
            )
        )

    async def _model_ready(self, request: web.Request) -> web.Response:
        served = self._model(request)
        if self.draining:
            raise protocol.ProtocolError("the server is shutting down", 503)
        return web.json_response(
            {"name": self.settings.model_name, "ready": True, "version": str(served.step)}
        )

    async def _infer(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        self.in_flight += 1
        try:
            served = self._model(request)
            with self.batcher.arriving():
                raw = await self._read_body(request)
            body, binary = self._split_body(request, raw)
            parsed = protocol.parse_infer_request(body, served.signature, binary)
            output, answered_by = await self.batcher.submit(parsed.array)
            response, data = protocol.infer_response(
                self.settings.model_name,
                str(answered_by.step),
                parsed.id,
                answered_by.signature.output,
                output,
                parsed.binary_output,
            )
            self.metrics.request_seconds.observe(time.perf_counter() - started)
            reply = _encode(response, data)
            if self.draining:
                reply.force_close()  # the client reconnects, to a replica that stays
            return reply
        finally:
            self.in_flight -= 1

    async def _read_body(self, request: web.Request) -> bytes:
        timeout = self.settings.body_timeout_seconds
        try:
            return await asyncio.wait_for(request.read(), timeout)
        except web.HTTPRequestEntityTooLarge:
            raise protocol.ProtocolError(
                f"request body too large: the limit is {self.settings.max_request_bytes} bytes "
                "(--max-request-bytes); send fewer rows per request",
                413,
            ) from None
        except TimeoutError:
            raise protocol.ProtocolError(
                f"request body not received within {timeout:g} s (--body-timeout-seconds)",
                408,
            ) from None

    @staticmethod
    def _split_body(request: web.Request, raw: bytes) -> tuple[Any, bytes | None]:
        """The JSON part, decoded, and the binary part (None without the extension)."""
        binary: bytes | None = None
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is not None:
            valid = header_length.isascii() and header_length.isdigit()
            if not valid or int(header_length) > len(raw):
                raise protocol.ProtocolError(
                    f"{HEADER_LENGTH}: must be the byte length of the JSON part of the body, "
                    f"at most {len(raw)} (got {header_length[:40]!r})"
                )
            raw, binary = raw[: int(header_length)], raw[int(header_length) :]
        try:
            return json.loads(raw), binary
        except RecursionError:
            raise protocol.ProtocolError("malformed JSON: nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            hint = (
                f"; binary tensor data needs the {HEADER_LENGTH} header"
                if binary is None and b"binary_data" in raw[:65536]
                else ""
            )
            raise protocol.ProtocolError(f"malformed JSON: {exc}{hint}") from None


def _encode(response: dict[str, Any], data: bytes | None) -> web.Response:
    """The JSON response, or with binary output its JSON part followed by the bytes."""
    if data is None:
        return web.json_response(response, dumps=_dumps)
    header = _dumps(response).encode()
    return web.Response(
        body=header + data,
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )
