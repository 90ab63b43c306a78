"""Topic, consumer-group and schema names private to one run (a test, a benchmark), so runs
never collide: `<prefix>-<run_id>-<what>` for topics and groups, `<prefix>_<run_id>[_<what>]`
for schemas."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from libs.common.settings import PipelineSettings

S = TypeVar("S", bound=PipelineSettings)


def _default(field: str) -> str:
    return str(PipelineSettings.model_fields[field].default)


@dataclass(frozen=True, slots=True)
class Names:
    """The tests use the default prefix `t`; the benchmark `bench`."""

    run_id: str
    prefix: str = "t"

    def topic(self, what: str) -> str:
        return f"{self.prefix}-{self.run_id}-{what}"

    def group(self, what: str) -> str:
        return f"{self.prefix}-{self.run_id}-{what}"

    def schema(self, what: str = "") -> str:
        return f"{self.prefix}_{self.run_id}" + (f"_{what}" if what else "")

    # The pipeline's own four topics, each the default name under this run's prefix.
    @property
    def raw(self) -> str:
        return self.topic(_default("topic_raw"))

    @property
    def validated(self) -> str:
        return self.topic(_default("topic_validated"))

    @property
    def enriched(self) -> str:
        return self.topic(_default("topic_enriched"))

    @property
    def dlq(self) -> str:
        return self.topic(_default("topic_dlq"))

    def env(self) -> dict[str, str]:
        """The environment that points a service at these names."""
        return {
            "TOPIC_RAW": self.raw,
            "TOPIC_VALIDATED": self.validated,
            "TOPIC_ENRICHED": self.enriched,
            "TOPIC_DLQ": self.dlq,
            "DATABASE_SCHEMA": self.schema(),
        }

    def settings(self, **overrides: Any) -> PipelineSettings:
        return self.settings_of(PipelineSettings, **overrides)

    def settings_of(self, cls: type[S], **overrides: Any) -> S:
        """Settings of class `cls` that point at these names (plus `overrides`)."""
        values: dict[str, Any] = {k.lower(): v for k, v in self.env().items()} | overrides
        return cls(**values)
