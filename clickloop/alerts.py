"""Alerts: what the loop tells a person without being asked.

An :class:`Alert` is one event worth a page or a chat message: a blocking check that failed (the graph
stopped before training), a retraining a sensor launched, a champion rolled back. Its payload is
plain JSON with a ``text`` line that chat webhooks (Slack, Mattermost, Teams' incoming webhooks)
show as is, and the facts behind it as fields. Delivery is the resource's job
(``resources.alerts.AlertWebhook``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

AlertKind = Literal["check_failed", "run_failed", "retraining_launched", "rollback"]
ALERT_KINDS: tuple[AlertKind, ...] = ("check_failed", "run_failed", "retraining_launched", "rollback")


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    title: str
    facts: Mapping[str, str] = field(default_factory=dict)
    #: where a person reads more (a Dagster run page, an MLflow model version), when known
    link: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ALERT_KINDS:
            raise ValueError(f"alert kind must be one of {ALERT_KINDS}, not {self.kind!r}")

    @property
    def text(self) -> str:
        facts = ", ".join(f"{k}={v}" for k, v in self.facts.items())
        return (
            f"[clickloop] {self.title}"
            + (f" ({facts})" if facts else "")
            + (f" {self.link}" if self.link else "")
        )

    def payload(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "title": self.title,
            "text": self.text,
            "facts": dict(self.facts),
            "link": self.link,
        }


def failed_check_alert(run_id: str, job: str, failed_checks: Mapping[str, str]) -> Alert:
    """A run stopped by blocking checks: ``failed_checks`` maps ``asset:check`` to its partition."""
    names = ", ".join(sorted(failed_checks))
    return Alert(
        "check_failed",
        f"blocking check failed in {job}: {names}",
        {"run_id": run_id, **{name: f"partition {key}" for name, key in sorted(failed_checks.items())}},
    )


#: a failed step's error is cut to this many characters in an alert (the run page has all of it)
STEP_ERROR_CHARS = 400


def run_failed_alert(
    run_id: str, job: str, message: str, failed_steps: Mapping[str, str] | None = None
) -> Alert:
    """A failed run; ``failed_steps`` maps each failed step to its error (a file that could not be
    ingested names itself there), which the alert repeats."""
    if not failed_steps:
        return Alert("run_failed", f"run of {job} failed: {message}", {"run_id": run_id})
    errors = {step: _cut(error) for step, error in sorted(failed_steps.items())}
    return Alert("run_failed", f"run of {job} failed in {', '.join(errors)}", {"run_id": run_id, **errors})


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= STEP_ERROR_CHARS else text[: STEP_ERROR_CHARS - 1] + "…"


#: The tags of a retraining request (``clickloop.retraining.Trigger.tags``) an alert repeats.
TRIGGER_FACTS = ("day", "metric", "value", "threshold")


def retraining_alert(run_id: str, sensor: str, tags: Mapping[str, str]) -> Alert:
    """A retraining a sensor launched, with the metric, value and threshold it crossed."""
    facts = {key: tags[f"clickloop/{key}"] for key in TRIGGER_FACTS if f"clickloop/{key}" in tags}
    return Alert("retraining_launched", f"{sensor} launched a retraining", {"run_id": run_id, **facts})


def rollback_alert(from_version: str, to_version: str, reason: str) -> Alert:
    return Alert(
        "rollback",
        f"champion rolled back from v{from_version} to v{to_version}",
        {"reason": reason} if reason else {},
    )
