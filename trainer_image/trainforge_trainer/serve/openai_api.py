"""OpenAI-compatible text generation for causal-lm checkpoints.

    GET  /v1/models
    POST /v1/completions          prompt -> text      (stream: true -> server-sent events)
    POST /v1/chat/completions     messages -> reply   (the tokenizer's chat template)

Supported: max_tokens (max_completion_tokens), temperature (0: greedy), top_p, stop (string
or up to 4), seed (same seed, same prompt -> same text), stream with
stream_options.include_usage, usage counts. n must be 1. Bad requests get OpenAI's error
shape, `{"error": {"message", "type", "param", "code"}}`, with a 4xx status.

Batching: one decode loop serves every request in flight (continuous batching). Each sequence
keeps its own KV cache. Each step prefills the requests that just arrived, then runs one
forward over the last token of every other active sequence (at most --max-batch-size, their
caches left-padded to one length and the padding masked) and samples one token for each; a
request joins at the next step and leaves when done, so concurrent requests share every step.
The padded copy of the caches costs memory traffic each step: fine for the small models the
bundled server is for; serve large models with `runtime: vllm` (paged attention).

A sequence keeps the model it started on: a hot reload applies to requests that arrive after
it (the decode loop groups sequences by model).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from aiohttp import web

from trainforge_trainer import config as config_mod, logs
from trainforge_trainer.serve.model_store import ServedModel

if TYPE_CHECKING:
    from trainforge_trainer.serve.app import InferenceServer

MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_TOKENS = 16


class OpenAiError(Exception):
    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code, self.kind = (
            message,
            status,
            param,
            code,
            kind,
        )

    def response(self) -> web.Response:
        body = {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }
        return web.json_response(body, status=self.status)


# --- request parsing (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    stream: bool
    include_usage: bool


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OpenAiError(f"{name}: must be a number (got {json.dumps(value)})", param=name)
    if not low <= value <= high:
        raise OpenAiError(f"{name}: must be between {low:g} and {high:g} (got {value})", param=name)
    return float(value)


def parse_sampling(body: dict[str, Any]) -> Sampling:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise OpenAiError(
            f"max_tokens: must be a positive integer (got {json.dumps(max_tokens)})",
            param="max_tokens",
        )
    stop = body.get("stop")
    stops: tuple[str, ...]
    if stop is None:
        stops = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif (
        isinstance(stop, list)
        and len(stop) <= MAX_STOP_SEQUENCES
        and all(isinstance(s, str) for s in stop)
    ):
        stops = tuple(stop)
    else:
        raise OpenAiError(
            f"stop: must be a string or a list of at most {MAX_STOP_SEQUENCES} strings",
            param="stop",
        )
    if any(not s for s in stops):
        raise OpenAiError("stop: sequences must not be empty", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise OpenAiError(f"seed: must be an integer (got {json.dumps(seed)})", param="seed")
    n = body.get("n", 1)
    if n != 1:
        raise OpenAiError(f"n: only 1 is supported (got {json.dumps(n)})", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise OpenAiError("stream: must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise OpenAiError("stream_options: must be an object", param="stream_options")
    return Sampling(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0),
        stop=stops,
        seed=seed,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
    )


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAiError("messages: must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise OpenAiError(f"messages[{i}]: must be {{role, content}}", param="messages")
        content = m.get("content")
        if isinstance(content, list):  # the content-parts form: text parts only
            parts = [p.get("text") for p in content if isinstance(p, dict)]
            if not all(isinstance(p, str) for p in parts) or len(parts) != len(content):
                raise OpenAiError(
                    f"messages[{i}].content: only text parts are supported", param="messages"
                )
            content = "".join(str(p) for p in parts)
        if not isinstance(content, str):
            raise OpenAiError(f"messages[{i}].content: must be a string", param="messages")
        out.append({"role": m["role"], "content": content})
    return out


def completion_prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAiError("prompt: must be a string (one prompt per request)", param="prompt")
    return prompt


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could be the start of a stop sequence (not sent yet)."""
    keep = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


# --- the decode loop ------------------------------------------------------------------------


KeyValues = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [1, heads, tokens, dim]


@dataclass
class _Sequence:
    served: ServedModel
    tokenizer: Any
    ids: list[int]
    prompt_tokens: int
    sampling: Sampling
    generator: torch.Generator
    eos: frozenset[int]
    events: asyncio.Queue[tuple[str, str | None]] = field(default_factory=asyncio.Queue)
    generated: list[int] = field(default_factory=list)
    sent: str = ""
    done: bool = False
    cache: KeyValues | None = None  # keys and values of every token but the last


def _sample(logits: torch.Tensor, s: Sampling, generator: torch.Generator) -> int:
    if s.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if s.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        outside = sorted_p.cumsum(0) - sorted_p >= s.top_p
        outside[0] = False  # top_p 0 means the single likeliest token
        sorted_p[outside] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))


def _cache_argument(lm: Any) -> str:
    # transformers 5.x renamed the forward's `past_key_values` to `cache`; accept both.
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm  # peft wraps it
    params = inspect.signature(base.forward).parameters
    return "past_key_values" if "past_key_values" in params else "cache"


def _key_values(out: Any) -> KeyValues:
    cache = getattr(out, "past_key_values", None) or out.cache
    return [(layer.keys, layer.values) for layer in cache.layers]


def _step(served: ServedModel, seqs: list[_Sequence]) -> torch.Tensor:
    """The next-token logits of each sequence; updates their KV caches.

    A sequence's cache holds every token but its last; a new one (no cache yet) is prefilled
    alone, then all others decode together in one forward: their last tokens, with their
    caches left-padded to one length and the padding masked out.
    """
    from transformers import DynamicCache

    lm: Any = served.module.lm  # a CausalLm (checked on arrival)
    device = served.device
    logits: list[torch.Tensor | None] = [None] * len(seqs)
    with torch.inference_mode():
        for i, s in enumerate(seqs):
            if s.cache is None:
                out = lm(input_ids=torch.tensor([s.ids], device=device), use_cache=True)
                s.cache = _key_values(out)
                logits[i] = out.logits[0, -1]
        decode = [i for i, row in enumerate(logits) if row is None]
        if decode:
            group = [seqs[i] for i in decode]
            caches = [s.cache for s in group if s.cache is not None]
            lengths = [c[0][0].shape[2] for c in caches]
            width = max(lengths)

            def padded(layer: int, which: int) -> torch.Tensor:
                return torch.cat(
                    [
                        F.pad(c[layer][which], (0, 0, width - n, 0))
                        for c, n in zip(caches, lengths, strict=True)
                    ]
                )

            data = [(padded(layer, 0), padded(layer, 1)) for layer in range(len(caches[0]))]
            mask = torch.tensor([[0] * (width - n) + [1] * (n + 1) for n in lengths], device=device)
            out = lm(
                input_ids=torch.tensor([[s.ids[-1]] for s in group], device=device),
                attention_mask=mask,
                position_ids=torch.tensor([[n] for n in lengths], device=device),
                use_cache=True,
                **{_cache_argument(lm): DynamicCache(ddp_cache_data=data)},
            )
            updated = _key_values(out)
            for j, (s, n) in enumerate(zip(group, lengths, strict=True)):
                s.cache = [
                    (k[j : j + 1, :, width - n :], v[j : j + 1, :, width - n :]) for k, v in updated
                ]
                logits[decode[j]] = out.logits[j, -1]
    return torch.stack([row for row in logits if row is not None]).float().cpu()


class Generator:
    """The decode loop shared by all requests (see the module docstring)."""

    def __init__(self, max_batch: int, thread_setup: Any) -> None:
        self.max_batch = max_batch
        self._active: list[_Sequence] = []
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, "generate", initializer=thread_setup)
        self._task: asyncio.Task[None] | None = None
        self.steps = 0

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def submit(self, seq: _Sequence) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="generate")
        self._active.append(seq)
        self._wake.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._active = [s for s in self._active if not s.done]
            if not self._active:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Oldest first, one model per forward (a reload may leave two in flight).
            batch = [s for s in self._active if s.served is self._active[0].served]
            batch = batch[: self.max_batch]
            try:
                logits = await loop.run_in_executor(self._executor, _step, batch[0].served, batch)
            except Exception as exc:  # a failed forward fails its requests, not the loop
                logs.error("generate_failed", error=repr(exc))
                for s in batch:
                    s.done = True
                    s.events.put_nowait(("error", repr(exc)))
                continue
            self.steps += 1
            for s, row in zip(batch, logits, strict=True):
                if not s.done:
                    self._advance(s, _sample(row, s.sampling, s.generator))

    @staticmethod
    def _advance(s: _Sequence, token: int) -> None:
        if token in s.eos:
            s.done = True
            s.events.put_nowait(("text", _flush(s, final=True)))
            s.events.put_nowait(("done", "stop"))
            return
        s.ids.append(token)
        s.generated.append(token)
        text = s.tokenizer.decode(s.generated, skip_special_tokens=True)
        for stop in s.sampling.stop:
            at = text.find(stop)
            if at >= 0:
                s.done = True
                s.events.put_nowait(("text", text[:at][len(s.sent) :]))
                s.sent = text[:at]
                s.events.put_nowait(("done", "stop"))
                return
        if len(s.generated) >= s.sampling.max_tokens:
            s.done = True
            s.events.put_nowait(("text", _flush(s, final=True)))
            s.events.put_nowait(("done", "length"))
            return
        s.events.put_nowait(("text", _flush(s, final=False)))


def _flush(s: _Sequence, final: bool) -> str:
    """Text not yet sent; unless final, minus what may be a stop sequence or a partial
    UTF-8 character in progress."""
    text = s.tokenizer.decode(s.generated, skip_special_tokens=True)
    if not final:
        if text.endswith("\ufffd"):
            return ""
        text = text[: len(text) - held_back(text, s.sampling.stop)]
    if len(text) <= len(s.sent):
        return ""
    delta = text[len(s.sent) :]
    s.sent = text
    return delta


# --- HTTP -------------------------------------------------------------------------------------


class OpenAiRoutes:
    def __init__(self, server: InferenceServer) -> None:
        self.server = server
        self.generator = Generator(server.settings.max_batch_size, server._limit_torch_threads)
        self._tokenizers: dict[str, Any] = {}
        self._configs: dict[Path, config_mod.TrainerConfig] = {}

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _models(self, _request: web.Request) -> web.Response:
        served = self.server.store.current
        data = []
        if served is not None:
            data.append(
                {
                    "id": self.server.settings.model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "trainforge",
                    "step": served.step,
                }
            )
        return web.json_response({"object": "list", "data": data})

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def _handle(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self.server.in_flight += 1
        try:
            try:
                body = await self._body(request)
                served, tokenizer = await self._model(body)
                sampling = parse_sampling(body)
                if chat:
                    messages = chat_messages(body)
                    if not getattr(tokenizer, "chat_template", None):
                        raise OpenAiError(
                            "this model's tokenizer has no chat template; use /v1/completions",
                            param="messages",
                        )
                    prompt = str(
                        tokenizer.apply_chat_template(
                            messages, tokenize=False, add_generation_prompt=True
                        )
                    )
                    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
                else:
                    ids = list(tokenizer(completion_prompt(body))["input_ids"])
                if not ids:
                    raise OpenAiError("prompt: must not be empty", param="prompt")
                seq = self._sequence(served, tokenizer, ids, sampling)
            except OpenAiError as exc:
                return exc.response()
            self.generator.submit(seq)
            try:
                if sampling.stream:
                    return await self._stream(request, seq, chat)
                return await self._complete(seq, chat)
            finally:
                seq.done = True  # a client that went away frees its slot at the next step
        finally:
            self.server.in_flight -= 1

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            raise OpenAiError("request body too large", status=413) from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise OpenAiError(f"malformed JSON: {exc}") from None
        if not isinstance(body, dict):
            raise OpenAiError("the request body must be a JSON object")
        return body

    async def _model(self, body: dict[str, Any]) -> tuple[ServedModel, Any]:
        name = self.server.settings.model_name
        if body.get("model") != name:
            raise OpenAiError(
                f"The model {body.get('model')!r} does not exist; this server serves {name!r}",
                status=404,
                param="model",
                code="model_not_found",
            )
        served = self.server.store.current
        if served is None or self.server.draining:
            reason = self.server._not_ready_reason() or "no model loaded"
            raise OpenAiError(reason, status=503, kind="server_error")
        if served.path not in self._configs:
            self._configs[served.path] = config_mod.parse(_manifest_config(served))
        cfg = self._configs[served.path]
        if not isinstance(cfg, config_mod.CausalLmConfig):
            raise OpenAiError(
                f"model {name!r} is not a language model (a {type(cfg).__name__}); use "
                f"/v2/models/{name}/infer",
                param="model",
            )
        key = cfg.model.path
        if key not in self._tokenizers:
            from trainforge_trainer.causal_lm import load_tokenizer

            loop = asyncio.get_running_loop()
            self._tokenizers[key] = await loop.run_in_executor(None, load_tokenizer, key)
        return served, self._tokenizers[key]

    def _sequence(
        self, served: ServedModel, tokenizer: Any, ids: list[int], s: Sampling
    ) -> _Sequence:
        lm: Any = served.module.lm
        context = int(getattr(lm.config, "max_position_embeddings", 0) or 0)
        if context and len(ids) + s.max_tokens > context:
            raise OpenAiError(
                f"This model's maximum context length is {context} tokens; the prompt has "
                f"{len(ids)} and max_tokens asks for {s.max_tokens} more. Shorten the prompt "
                "or lower max_tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        eos = getattr(lm.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        eos_ids = frozenset(eos if isinstance(eos, list) else [] if eos is None else [eos])
        generator = torch.Generator()
        if s.seed is not None:
            generator.manual_seed(s.seed)
        else:
            generator.seed()
        return _Sequence(served, tokenizer, list(ids), len(ids), s, generator, eos_ids)

    def _usage(self, seq: _Sequence) -> dict[str, int]:
        n = len(seq.generated)
        return {
            "prompt_tokens": seq.prompt_tokens,
            "completion_tokens": n,
            "total_tokens": seq.prompt_tokens + n,
        }

    async def _events(self, seq: _Sequence) -> AsyncIterator[tuple[str, str | None]]:
        while True:
            kind, value = await seq.events.get()
            if kind == "error":
                raise RuntimeError(value)
            yield kind, value
            if kind == "done":
                return

    async def _complete(self, seq: _Sequence, chat: bool) -> web.Response:
        text, finish = "", None
        async for kind, value in self._events(seq):
            if kind == "text":
                text += value or ""
            else:
                finish = value
        ident, created = _ident(chat), int(time.time())
        name = self.server.settings.model_name
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": name,
            "choices": [choice],
            "usage": self._usage(seq),
        }
        reply = web.json_response(body)
        if self.server.draining:
            reply.force_close()
        return reply

    async def _stream(self, request: web.Request, seq: _Sequence, chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        ident, created = _ident(chat), int(time.time())
        name = self.server.settings.model_name
        kind_name = "chat.completion.chunk" if chat else "text_completion"

        async def send(choice: dict[str, Any] | None, usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {
                "id": ident,
                "object": kind_name,
                "created": created,
                "model": name,
                "choices": [] if choice is None else [choice],
            }
            if usage is not None:
                chunk["usage"] = usage
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            c: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                delta: dict[str, Any] = {"role": "assistant"} if first else {}
                if text is not None:
                    delta["content"] = text
                c["delta"] = delta
            else:
                c["text"] = text or ""
            return c

        try:
            if chat:
                await send(choice("", None, first=True))
            try:
                async for kind, value in self._events(seq):
                    if kind == "text" and value:
                        await send(choice(value, None))
                    elif kind == "done":
                        await send(choice(None if chat else "", value))
            except RuntimeError as exc:
                error = {"error": {"message": str(exc), "type": "server_error"}}
                await response.write(f"data: {json.dumps(error)}\n\n".encode())
            if seq.sampling.include_usage:
                await send(None, self._usage(seq))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away: its sequence is dropped at the next step
        return response


def _manifest_config(served: ServedModel) -> Any:
    from trainforge_trainer.checkpoint import read_checkpoint

    return read_checkpoint(served.path, verify=False).manifest["config"]


def _ident(chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
