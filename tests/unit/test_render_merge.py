"""The podTemplate merge rule."""

from __future__ import annotations

from typing import Any

import pytest

from trainforge.render.merge import merge


@pytest.mark.parametrize(
    ("base", "overlay", "expected"),
    [
        ({"a": 1, "b": 2}, {"b": 3}, {"a": 1, "b": 3}),  # scalars replaced
        ({"a": {"x": 1}}, {"a": {"y": 2}}, {"a": {"x": 1, "y": 2}}),  # objects merged
        ({"args": ["a", "b"]}, {"args": ["c"]}, {"args": ["c"]}),  # lists of scalars replaced
        (
            {"tolerations": [{"key": "a"}]},
            {"tolerations": [{"key": "b"}]},
            {"tolerations": [{"key": "a"}, {"key": "b"}]},  # other lists of objects appended
        ),
        (
            {"containers": [{"name": "t", "image": "a", "env": [{"name": "X", "value": "1"}]}]},
            {
                "containers": [
                    {"name": "t", "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}]}
                ]
            },
            {
                "containers": [
                    {
                        "name": "t",
                        "image": "a",
                        "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}],
                    }
                ]
            },  # named items merged by name, recursively
        ),
        (
            {"volumeMounts": [{"name": "v", "mountPath": "/a"}]},
            {
                "volumeMounts": [
                    {"name": "v", "mountPath": "/b"},
                    {"name": "v", "mountPath": "/a", "readOnly": True},
                ]
            },
            {
                "volumeMounts": [
                    {"name": "v", "mountPath": "/a", "readOnly": True},
                    {"name": "v", "mountPath": "/b"},
                ]
            },
        ),  # volumeMounts keyed by mountPath
        (
            {"ports": [{"containerPort": 1, "name": "a"}]},
            {"ports": [{"containerPort": 1, "name": "b"}]},
            {"ports": [{"containerPort": 1, "name": "b"}]},
        ),
        ({}, {"new": [1]}, {"new": [1]}),
    ],
)
def test_merge_rule(
    base: dict[str, Any], overlay: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert merge(base, overlay) == expected


def test_merge_leaves_its_inputs_alone() -> None:
    base = {"containers": [{"name": "t", "env": []}]}
    overlay = {"containers": [{"name": "t", "env": [{"name": "A"}]}]}
    merged = merge(base, overlay)
    merged["containers"][0]["env"].append({"name": "B"})
    assert base == {"containers": [{"name": "t", "env": []}]}
    assert overlay == {"containers": [{"name": "t", "env": [{"name": "A"}]}]}
