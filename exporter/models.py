"""The API's payloads as pydantic models, one per payload (see ``openapi.yaml``).

Lenient on nulls, missing and unknown fields (new fields appear), strict on wrong
types and impossible values; :func:`exporter.client.payload` is their one error path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator, model_validator
from pydantic_core import PydanticCustomError

RANKS = ("gold", "silver", "bronze", "unranked")
T = TypeVar("T")


def _bad(detail: str) -> PydanticCustomError:
    return PydanticCustomError("exec_payload", "{detail}", {"detail": detail})


def _number(lo: float, hi: float | None = None,
            integer: bool = False) -> Callable[[object], float | int | None]:
    def check(value: object) -> float | int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(f"is {type(value).__name__}, expected a number")
        if not math.isfinite(value):
            raise _bad("is not finite")
        if integer and isinstance(value, float) and not value.is_integer():
            raise _bad(f"is {value!r}, expected a whole number")
        if hi is not None and not lo <= value <= hi:
            raise _bad(f"is {value!r}, outside {lo:g}-{hi:g}")
        if value < lo:
            raise _bad(f"is {value!r}, below {lo:g}")
        return int(value) if integer else float(value)
    return check


def _text(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise _bad(f"is {type(value).__name__}, expected a string")
    return value


def _required_text(value: object) -> str:
    text = _text(_present(value))
    if not text:
        raise _bad("is empty")
    return text


def _label(value: object) -> str | None:
    # Display names are best effort: a name of another type is no name, not a bad item.
    return value if isinstance(value, str) and value else None


def _present(value: object) -> object:
    if value is None:
        raise _bad("is missing")
    return value


def _rank(value: object) -> str | None:
    if value is None:
        return None
    if value not in RANKS:
        raise _bad(f"is {value!r}, not one of {', '.join(RANKS)}")
    return str(value)


RankName = Annotated[str, BeforeValidator(lambda value: _rank(_present(value)))]
Count = Annotated[int | None, BeforeValidator(_number(lo=0, integer=True))]
Positive = Annotated[int | None, BeforeValidator(_number(lo=1, integer=True))]
Amount = Annotated[float | None, BeforeValidator(_number(lo=0))]
Score = Annotated[float | None, BeforeValidator(_number(lo=0, hi=100))]
Lift = Annotated[float | None, BeforeValidator(_number(lo=-100, hi=100))]
Rank = Annotated[str | None, BeforeValidator(_rank)]
Text = Annotated[str | None, BeforeValidator(_text)]
Id = Annotated[str, BeforeValidator(_required_text)]
Label = Annotated[str | None, BeforeValidator(_label)]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class RankCount(_Payload):
    """One entry of ``score_distribution``."""

    rank: RankName
    count: Count = None
    percentage: Score = None


class SummaryPayload(_Payload):
    """``GET /scenarios/{id}/analytics/summary``."""

    participant_count: Count = None
    total_sessions: Count = None
    average_best_score: Score = None
    average_best_rank: Rank = None
    average_lift_percentage: Lift = None
    total_practice_minutes: Amount = None
    average_session_duration_seconds: Amount = None
    score_distribution: list[RankCount] | None = None

    @field_validator("score_distribution")
    @classmethod
    def _ranks_once(cls, entries: list[RankCount] | None) -> list[RankCount] | None:
        seen: set[str] = set()
        for entry in entries or ():
            if entry.rank in seen:
                raise _bad(f"lists {entry.rank!r} twice")
            seen.add(entry.rank)
        return entries


class UserRef(_Payload):
    """A user, ``{"id", "email"}``: nested in lists' items, and a ``WorkspaceMember`` (the
    schema has it at the top, the documented example nested in ``user``)."""

    id: Id
    email: Text = None


class ParticipantPayload(_Payload):
    """One ``ScenarioParticipantEntry`` of ``GET /scenarios/{id}/analytics/participants``."""

    user: UserRef
    session_count: Count = None
    first_score: Score = None
    best_score: Score = None
    lift_percentage: Lift = None
    total_duration_seconds: Amount = None
    first_rank: Rank = None
    best_rank: Rank = None


class ScenarioPayload(_Payload):
    """One item of ``GET /scenarios``."""

    id: Id
    slug: Text = None
    name: Label = None


class GroupPayload(_Payload):
    """One item of ``GET /workspace/groups``."""

    id: Id
    name: Label = None


class ProficiencyPayload(_Payload):
    """A skill's ``proficiency_summary``."""

    participant_count: Count = None
    scored_participant_count: Count = None
    pct_proficient_plus: Score = None
    avg_score: Score = None


class SkillPayload(_Payload):
    """One item of ``GET /skills?include=proficiency``."""

    id: Text = None
    slug: Text = None
    name: Text = None
    proficiency_summary: ProficiencyPayload | None = None

    @model_validator(mode="after")
    def _has_a_label(self) -> SkillPayload:
        if not (self.slug or self.id):
            raise _bad("has neither slug nor id")
        return self


class AssignmentPayload(_Payload):
    """One item of ``GET /scenarios/assignments``; ``status`` is kept as given (the API
    may add statuses)."""

    id: Text = None
    scenario: ScenarioPayload
    status: Annotated[str, BeforeValidator(_required_text)]


class Pagination(_Payload):
    """The ``pagination`` object of every list."""

    page: Positive = None
    page_size: Positive = None
    total_count: Count = None
    total_pages: Count = None


class PageEnvelope(_Payload):
    """Every list body: ``{"data": [...], "pagination": {...}}``."""

    data: list[Any]
    pagination: Pagination | None = None


class ErrorDetail(_Payload):
    """The ``error`` object of an error body (read as far as it goes: never strict)."""

    type: Any = None
    code: Any = None
    message: Any = None
    retry_after: Any = None


class ErrorEnvelope(_Payload):
    """An error body: ``{"error": {"type", "code", "message"}}``, maybe a top-level
    ``retry_after``. Read as far as it goes: any body gives an envelope."""

    error: ErrorDetail | None = None
    retry_after: Any = None

    @model_validator(mode="before")
    @classmethod
    def _whatever_came(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return {}
        if not isinstance(data.get("error"), dict):
            return {**data, "error": None}
        return data


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a paginated list: its items and what the pagination says
    (``page_size`` None: not given)."""

    items: tuple[T, ...]
    page: int
    total_count: int | None
    total_pages: int
    page_size: int | None = None
