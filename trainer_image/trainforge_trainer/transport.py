"""What the collectives actually run over, for the progress record's "transport".

gloo always uses TCP sockets. NCCL picks InfiniBand, RoCE or sockets at start-up and says so
only in its INFO log, so when the user has not set NCCL_DEBUG the trainer turns that log on
for the INIT and NET subsystems, into a file of its own (the console stays as it was), and
reads the choice back. With NCCL_DEBUG set by the user, NCCL logs where they asked and the
transport is not reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path

import trainforge_contract as contract

# "NET/IB : Using [0]mlx5_0:1/RoCE [1]mlx5_1:1/IB ; OOB eth0:10.0.0.5<0>"
_IB_DEVICES = re.compile(r"NET/IB : Using (.*)")
# "Using network IB" / "Using network Socket" (NCCL >= 2.4); "NET/Socket : Using [0]eth0:..."
_NETWORK = re.compile(r"Using network (\w+)")
_SOCKET = re.compile(r"NET/Socket : Using \[\d+\]")
# Channel lines name the transport of each connection: "via NET/IB/0", "via NET/Socket/0".
_CHANNEL = re.compile(r"via NET/(IB|Socket)")


def transport_from_nccl_log(lines: Iterable[str]) -> str | None:
    """InfiniBand, RoCE or Socket from NCCL INFO lines; None when they do not say."""
    network = None
    link_layers: set[str] = set()
    for line in lines:
        if "NCCL INFO" not in line:
            continue
        if m := _IB_DEVICES.search(line):
            link_layers |= set(re.findall(r"/(IB|RoCE)\b", m.group(1)))
            network = network or "IB"
        elif m := _NETWORK.search(line):
            network = m.group(1)
        elif m := _CHANNEL.search(line):
            network = network or m.group(1)
        elif _SOCKET.search(line):
            network = network or "Socket"
    if network == "Socket":
        return contract.TRANSPORT_SOCKET
    if network == "IB":
        # NCCL's "IB" network covers RoCE NICs too; the device list says which.
        return contract.TRANSPORT_ROCE if link_layers == {"RoCE"} else contract.TRANSPORT_INFINIBAND
    return None


def enable_nccl_log(environ: MutableMapping[str, str], path: Path) -> Path | None:
    """Before NCCL starts: log its transport choice to `path`, unless the user configured
    NCCL's log. Returns the file to read, or None."""
    if "NCCL_DEBUG" in environ:
        return None
    environ["NCCL_DEBUG"] = "INFO"
    environ["NCCL_DEBUG_SUBSYS"] = "INIT,NET"
    environ["NCCL_DEBUG_FILE"] = str(path)
    return path


def detect(backend_uses_nccl: bool, nccl_log: Path | None) -> str | None:
    if not backend_uses_nccl:
        return contract.TRANSPORT_SOCKET  # gloo
    if nccl_log is None or not nccl_log.is_file():
        return None
    with open(nccl_log, errors="replace") as f:
        return transport_from_nccl_log(f)


def default_log_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("TMPDIR", "/tmp")) / f"trainforge-nccl.{os.getpid()}.log"
