"""The wire format between a campaign's coordinator and its workers (sans-I/O).

A job is one claimed attempt (``CallJob``) as a JSON object; a result is an
event on the campaign's Redis stream (``placed``, ``finished``, ``dnc``) whose
fields are strings. Both directions are validated: a job whose data is bad (a
poison job) raises :class:`BadJob` naming the field, so that it fails alone
and is recorded as an ``error`` attempt instead of stopping a worker.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from vantum_pipeline.campaign.dispatch import CallJob
from vantum_pipeline.campaign.store import AttemptRecord, AttemptRow
from vantum_pipeline.errors import ProtocolError
from vantum_pipeline.telephony.numbers import InvalidNumberError, validate_e164

__all__ = [
    "BadJob",
    "Keys",
    "decode_event",
    "decode_job",
    "decode_record",
    "encode_event",
    "encode_job",
    "encode_record",
]

_ROW_FIELDS = {
    "campaign_id": str,
    "prospect_id": str,
    "attempt": int,
    "number": str,
    "state": str,
    "claimed_at": float,
}
_MAX_JOB_BYTES = 64 * 1024


class BadJob(ProtocolError):
    """A job or result whose data cannot be a call: the message names the field."""


def encode_job(job: CallJob) -> str:
    row = job.attempt
    return json.dumps(
        {
            "attempt": {
                "campaign_id": row.campaign_id,
                "prospect_id": row.prospect_id,
                "attempt": row.attempt,
                "number": row.number,
                "state": row.state,
                "call_sid": row.call_sid,
                "claimed_at": row.claimed_at,
            },
            "name": job.name,
            "company": job.company,
            "timezone": job.timezone,
            "variables": job.variables,
        },
        separators=(",", ":"),
    )


def _field(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise BadJob(f"job {where}: no {key!r}")
    value = data[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadJob(f"job {where}: {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def decode_job(text: str | bytes) -> CallJob:
    """A job from its JSON; :class:`BadJob` for anything that is not a dialable attempt."""
    if len(text) > _MAX_JOB_BYTES:
        raise BadJob(f"job of {len(text)} bytes exceeds {_MAX_JOB_BYTES}")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadJob(f"job is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("attempt"), dict):
        raise BadJob("job must be a JSON object with an 'attempt' object")
    raw = data["attempt"]
    values = {key: _field(raw, key, kind, "attempt") for key, kind in _ROW_FIELDS.items()}
    sid = raw.get("call_sid")
    if sid is not None and not isinstance(sid, str):
        raise BadJob("job attempt: 'call_sid' must be a string or null")
    try:
        values["number"] = validate_e164(values["number"])
    except InvalidNumberError as exc:
        raise BadJob(f"job attempt: 'number': {exc}") from None
    if values["attempt"] < 1:
        raise BadJob(f"job attempt: 'attempt' must be >= 1, got {values['attempt']}")
    for key in ("campaign_id", "prospect_id"):
        if not values[key] or ":" in values[key] or len(values[key]) > 200:
            raise BadJob(f"job attempt: {key!r} must be 1-200 characters without ':', got {values[key]!r}")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
    ):
        raise BadJob("job: 'variables' must map strings to strings")
    texts = {key: data.get(key, "") for key in ("name", "company", "timezone")}
    for key, value in texts.items():
        if not isinstance(value, str):
            raise BadJob(f"job: {key!r} must be a string")
    return CallJob(
        AttemptRow(call_sid=sid, **values),
        texts["name"],
        texts["company"],
        texts["timezone"] or "UTC",
        dict(variables),
    )


def encode_record(record: AttemptRecord) -> str:
    data = asdict(record)
    data["transcript"] = list(record.transcript)
    return json.dumps(data, separators=(",", ":"), default=str)


def decode_record(text: str | bytes) -> AttemptRecord:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadJob(f"result record is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("outcome"), str):
        raise BadJob("result record must be a JSON object with an 'outcome' string")
    known = set(AttemptRecord.__dataclass_fields__)
    return AttemptRecord(**{key: value for key, value in data.items() if key in known})


def encode_event(kind: str, job_id: str, job_text: str = "", **fields: str) -> dict[str, str]:
    return {"type": kind, "job_id": job_id, "job": job_text, **fields}


def decode_event(fields: dict[bytes | str, bytes | str]) -> tuple[str, dict[str, str]]:
    """``(type, fields)`` of a stream entry, everything as ``str``."""
    out = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in fields.items()
    }
    kind = out.get("type", "")
    if kind not in ("placed", "finished", "dnc"):
        raise BadJob(f"result event of unknown type {kind!r}")
    if not out.get("job_id"):
        raise BadJob(f"result event {kind!r} names no job")
    return kind, out


class Keys:
    """The Redis keys of one campaign (and the cluster-wide ones)."""

    #: Numbers nobody may dial, normalized E.164; shared by every campaign.
    DNC = "vantum:dnc"
    #: The arq queue the coordinators fill and the workers drain.
    QUEUE = "vantum:calls"
    #: arq's key of a job being run (it lapses when its worker dies).
    IN_PROGRESS = "arq:in-progress:"
    #: A live worker's health (JSON), expiring when the worker stops renewing it.
    WORKER = "vantum:worker:"

    def __init__(self, campaign_id: str) -> None:
        self.campaign_id = campaign_id
        base = f"vantum:campaign:{campaign_id}"
        self.config = f"{base}:config"
        self.results = f"{base}:results"
        self.metrics = f"{base}:metrics"
        #: The console's figures of the campaign (JSON), which the coordinator publishes for the workers' consoles.
        self.figures = f"{base}:figures"
        self._dial = f"{base}:dial:"

    @classmethod
    def worker(cls, worker_id: str) -> str:
        return cls.WORKER + worker_id

    def dial(self, job_id: str) -> str:
        """The marker of one attempt's dial: ``state`` (dialing, placed, done), ``sid``, ``worker``, ``at``."""
        return self._dial + job_id
