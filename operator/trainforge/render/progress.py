"""What a worker pod needs to push live progress to the operator (operator/trainforge/progress/).

A projected ServiceAccount token with the operator's own audience, bound to the pod: it proves
to the operator which pod is speaking and is useless against the API server (wrong audience).
User pods get no API permissions for it. Nothing is rendered when the operator has no
progress URL (the termination message stays the only report).
"""

from __future__ import annotations

from typing import Any

import trainforge_contract as contract

PROGRESS_TOKEN_VOLUME = "trainforge-progress-token"


def progress_env(url: str) -> list[dict[str, Any]]:
    if not url:
        return []
    return [
        {"name": contract.ENV_PROGRESS_URL, "value": url},
        {
            "name": contract.ENV_PROGRESS_TOKEN_PATH,
            "value": f"{contract.PROGRESS_TOKEN_DIR}/{contract.PROGRESS_TOKEN_FILE}",
        },
    ]


def progress_volume(url: str) -> list[dict[str, Any]]:
    if not url:
        return []
    return [
        {
            "name": PROGRESS_TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": contract.PROGRESS_AUDIENCE,
                            "expirationSeconds": contract.PROGRESS_TOKEN_EXPIRATION_SECONDS,
                            "path": contract.PROGRESS_TOKEN_FILE,
                        }
                    }
                ]
            },
        }
    ]


def progress_mount(url: str) -> list[dict[str, Any]]:
    if not url:
        return []
    return [
        {"name": PROGRESS_TOKEN_VOLUME, "mountPath": contract.PROGRESS_TOKEN_DIR, "readOnly": True}
    ]
