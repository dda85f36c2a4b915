"""The trainforge CRDs as pydantic models; the CRD YAML in crds/ is generated from them."""

from trainforge.api.common import Condition, InvalidSpec, describe_errors
from trainforge.api.inferenceservice import (
    InferenceService,
    InferenceServiceSpec,
    InferenceServiceStatus,
    parse_inference_service,
    parse_inference_service_spec,
)
from trainforge.api.trainingjob import (
    TrainingJob,
    TrainingJobSpec,
    TrainingJobStatus,
    parse_training_job,
    parse_training_job_spec,
)

__all__ = [
    "Condition",
    "InferenceService",
    "InferenceServiceSpec",
    "InferenceServiceStatus",
    "InvalidSpec",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "describe_errors",
    "parse_inference_service",
    "parse_inference_service_spec",
    "parse_training_job",
    "parse_training_job_spec",
]
