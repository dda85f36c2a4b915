"""`main(argv)`: parse the settings, serve until SIGTERM or SIGINT, drain, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence

import trainforge_contract as contract
from trainforge_trainer import logs
from trainforge_trainer.serve.settings import ServeSettings, SettingsError, parse


def main(argv: Sequence[str] | None = None) -> int:
    logs.configure(rank=0)
    try:
        settings = parse(sys.argv[1:] if argv is None else argv, os.environ)
    except SettingsError as exc:
        for line in exc.lines:
            print(f"trainforge serve: {line}", file=sys.stderr)
        logs.error("config_error", errors=exc.lines)
        return contract.EXIT_CONFIG_ERROR
    return asyncio.run(_serve(settings))


async def _serve(settings: ServeSettings) -> int:
    # Imported here: torch loads in seconds, and a bad flag should fail before that.
    from trainforge_trainer.serve.app import InferenceServer

    loop = asyncio.get_running_loop()
    stopping: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(sig: signal.Signals) -> None:
        if not stopping.done():
            stopping.set_result(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    server = InferenceServer(settings)
    try:
        await server.start()
    except OSError as exc:  # a busy port, an address not on this host, a name that won't resolve
        # asyncio words it "error while attempting to bind on address (...): <reason>".
        reason = exc.strerror.rsplit(": ", 1)[-1] if exc.strerror else str(exc)
        message = f"--host/--port: cannot listen on {settings.host}:{settings.port}: {reason}"
        print(f"trainforge serve: {message}", file=sys.stderr)
        logs.error("config_error", errors=[message])
        await server.batcher.stop()
        return contract.EXIT_CONFIG_ERROR
    received = await stopping
    logs.event("signal", signal=received.name)
    # SIGTERM comes from Kubernetes: wait for endpoints to drop the pod. Ctrl-C: stop now.
    await server.shutdown(settings.drain_seconds if received == signal.SIGTERM else 0)
    return 0
