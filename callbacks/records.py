"""The run's bundle-in-progress: what each fit-end step made, as plain records every step can read.

Steps never read another step's attributes (Lightning's own callbacks never do either). A step publishes
each artifact it made, or tried to make, as an `ArtifactRecord`; a later step finds its inputs by format and
precision; DeployBundle writes the manifest and report from the records alone. Facts about the model that are
not a file (structured pruning's MACs, for one) are published as `notes`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional


from deploy.bundle import STATUSES

OK, SKIPPED, FAILED = STATUSES


@dataclass
class ArtifactRecord:
    """One artifact a step made (status ok) or could not make (skipped / failed, with a one-sentence reason).

    format: onnx | onnx-int8 | openvino-ir | tensorrt (the manifest's formats); precision: fp32 | fp16 | int8;
    runtime: the runtime the file is meant for (onnxruntime, tensorrt, openvino ...); facts: the step's own
    findings (parity, gate attempts, engine sidecar, TensorRT check), copied into the manifest entry.
    """

    step: str
    format: str
    precision: str
    runtime: str
    status: str = OK
    file: Optional[Path] = None
    reason: str = ""
    label: str = ""
    facts: dict[str, Any] = field(default_factory=dict)
    companions: list[Path] = field(default_factory=list)  # files it needs beside it (an OpenVINO IR's .bin)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"artifact record status must be one of {STATUSES}, got {self.status!r}")
        if self.status == OK and self.file is None:
            raise ValueError(f"{self.step}: an ok artifact record needs its file")
        if self.status != OK and not self.reason:
            raise ValueError(f"{self.step}: a {self.status} artifact record needs a one-sentence reason")
        self.label = self.label or default_label(self.format, self.precision)

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["file"] = self.file.name if self.file is not None else None
        out["companions"] = [c.name for c in self.companions]
        return out


def default_label(fmt: str, precision: str) -> str:
    kind = {"onnx": "ONNX", "onnx-int8": "ONNX", "tensorrt": "TensorRT", "pytorch": "PyTorch",
            "tflite": "LiteRT", "pte": "ExecuTorch", "ncnn": "NCNN"}.get(fmt, fmt)
    return f"{kind} {precision.upper()}"


@dataclass
class StepFailure:
    step: str
    sentence: str


@dataclass
class FitEndRecord:
    """Everything the fit-end steps of one fit published, in the order they published it."""

    artifacts: list[ArtifactRecord] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (title, one line for the report)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)  # step name -> its facts (report.json)
    failures: list[StepFailure] = field(default_factory=list)
    topics: dict[str, dict[str, Any]] = field(default_factory=dict)  # "int8" -> a study's facts (report.json)
    bundle_dir: Optional[Path] = None

    def publish(self, record: ArtifactRecord) -> ArtifactRecord:
        self.artifacts.append(record)
        return record

    def note(self, step: str, title: str, line: str, facts: Optional[dict[str, Any]] = None,
             topic: Optional[str] = None) -> None:
        """A line for the report; `facts` go into report.json under the step's name, and under `topic` too where
        given (the report's "int8" section reads the INT8 study whichever step made it)."""
        self.notes.append((title, line))
        if facts is not None:
            self.facts[step] = facts
            if topic is not None:
                self.topics[topic] = facts

    def find(self, format: str, precision: Optional[str] = None, runtime: Optional[str] = None,
             status: Optional[str] = OK) -> Optional[ArtifactRecord]:
        """The latest record of that format (and precision, runtime, status; status None = any)."""
        for record in reversed(self.artifacts):
            if (record.format == format and precision in (None, record.precision)
                    and runtime in (None, record.runtime) and status in (None, record.status)):
                return record
        return None

    def fail(self, step: str, sentence: str) -> None:
        self.failures.append(StepFailure(step, sentence))
