"""The chart's PrometheusRule: valid for Prometheus (`promtool check rules`), and each alert
fires on the series it is meant for and stays quiet otherwise (`promtool test rules`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from helmtest import find, render

pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool missing: apt-get install prometheus"
)


def rules_file(helm: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> Path:
    [rule] = find(
        render(helm, {"prometheusRule": {"enabled": True, **(values or {})}}, tmp_path),
        "PrometheusRule",
    )
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules(helm: Path, tmp_path: Path) -> None:
    result = promtool("check", "rules", str(rules_file(helm, tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def alert(name: str, at: str, *firing: tuple[dict[str, str], str]) -> dict[str, Any]:
    """`name` evaluated at `at` fires once per (labels, summary) in `firing`, or not at all."""
    return {
        "eval_time": at,
        "alertname": name,
        "exp_alerts": [
            {
                "exp_labels": {"severity": "warning", **labels},
                "exp_annotations": {"summary": summary},
            }
            for labels, summary in firing
        ],
    }


# Series in promtool's expanding notation: "0+0x30" is 31 samples of 0, one per minute.
UNIT_TESTS: list[dict[str, Any]] = [
    {  # A new failure in "ml" fires (also the namespace's first); an old one in "old" not.
        "interval": "1m",
        "input_series": [
            {
                "series": 'trainforge_trainingjobs{namespace="ml", phase="Failed"}',
                "values": "_x20 1x40",
            },
            {
                "series": 'trainforge_trainingjobs{namespace="old", phase="Failed"}',
                "values": "2x60",
            },
        ],
        "alert_rule_test": [
            alert(
                "TrainforgeTrainingJobFailed",
                "25m",
                ({"namespace": "ml"}, "A TrainingJob failed in namespace ml."),
            ),
            alert("TrainforgeTrainingJobFailed", "50m"),
        ],
    },
    {  # Three counted restarts in 30 minutes fire; disruptions (counted=false) do not count.
        "interval": "1m",
        "input_series": [
            {
                "series": 'trainforge_gang_restarts_total{namespace="ml", counted="true"}',
                "values": "0x10 1 2 3 3x20",
            },
            {
                "series": 'trainforge_gang_restarts_total{namespace="spot", counted="false"}',
                "values": "0+1x30",
            },
        ],
        "alert_rule_test": [
            alert(
                "TrainforgeGangRestartingRepeatedly",
                "15m",
                ({"namespace": "ml"}, "TrainingJob gangs keep restarting in namespace ml."),
            ),
            alert("TrainforgeGangRestartingRepeatedly", "9m"),
        ],
    },
    {  # Pending for 30 minutes fires; pending for 20 does not.
        "interval": "1m",
        "input_series": [
            {
                "series": 'trainforge_trainingjobs{namespace="ml", phase="Pending"}',
                "values": "1x40",
            },
            {
                "series": 'trainforge_trainingjobs{namespace="quick", phase="Pending"}',
                "values": "_x19 1x20",
            },
        ],
        "alert_rule_test": [
            alert(
                "TrainforgeTrainingJobPendingTooLong",
                "35m",
                ({"namespace": "ml"}, "TrainingJobs have been Pending for 30m in namespace ml."),
            ),
        ],
    },
    {
        "interval": "1m",
        "input_series": [
            {
                "series": 'trainforge_inferenceservices{namespace="serve", ready="false"}',
                "values": "1x20",
            },
        ],
        "alert_rule_test": [
            alert("TrainforgeInferenceServiceNotReady", "5m"),
            alert(
                "TrainforgeInferenceServiceNotReady",
                "15m",
                ({"namespace": "serve"}, "InferenceServices not Ready for 10m in namespace serve."),
            ),
        ],
    },
    {  # 20% of reconciles failing for 15 minutes.
        "interval": "1m",
        "input_series": [
            {"series": 'trainforge_reconcile_total{kind="TrainingJob"}', "values": "0+10x40"},
            {"series": 'trainforge_reconcile_errors_total{kind="TrainingJob"}', "values": "0+2x40"},
        ],
        "alert_rule_test": [
            alert(
                "TrainforgeReconcileErrors",
                "25m",
                (
                    {"kind": "TrainingJob"},
                    "The trainforge operator fails many TrainingJob reconciles.",
                ),
            ),
        ],
    },
]


def test_alerts_fire_on_what_they_describe(helm: Path, tmp_path: Path) -> None:
    rules = rules_file(helm, tmp_path)
    # promtool compares every annotation; the summaries (which carry the labels) are checked,
    # the long descriptions only by `promtool check rules`.
    groups = yaml.safe_load(rules.read_text())
    for rule in groups["groups"][0]["rules"]:
        rule["annotations"] = {"summary": rule["annotations"]["summary"]}
    rules.write_text(yaml.safe_dump(groups))
    tests = tmp_path / "rules-test.yaml"
    tests.write_text(
        yaml.safe_dump(
            {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": UNIT_TESTS}
        )
    )
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
