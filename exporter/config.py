"""Configuration: the YAML file as a validated, immutable model.

Every problem is reported at once, one line each, prefixed with the field's dotted
path (``cohorts[2].window: ...``); unknown keys are errors and types are strict. The
API key comes from ``api.api_key_file`` or ``$EXEC_API_KEY`` (:func:`load_api_key`).
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import stat
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

API_KEY_ENV = "EXEC_API_KEY"


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` holds one line per fault."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class InvalidApiKey(ConfigError):
    """A key that cannot be sent as a bearer token: refused wherever a key is loaded,
    ``--config.check`` included (unlike a key that is merely missing there)."""


# --- durations -------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400,
                   "y": 365 * 86400}
_DURATION_RE = re.compile(r"^((\d+)(ms|s|m|h|d|w|y))+$")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def parse_duration(value: object) -> float:
    """Parse a Prometheus-style duration (``30s``, ``15m``, ``1h30m``, ``7d``) into seconds."""
    # A bare number is refused rather than guessed: `timeout: 10` could mean seconds
    # or minutes, and Prometheus' own configuration refuses it too.
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"must be a duration such as '10s', '15m' or '7d', got {value!r}")
    text = value.strip()
    if text.startswith("-") and _DURATION_RE.match(text[1:]):
        raise ValueError(f"duration {value!r} must be positive, e.g. '{text[1:]}'")
    if not _DURATION_RE.match(text):
        raise ValueError(f"invalid duration {value!r}: use forms such as '30s', '15m', '6h', '7d'")
    seconds = sum(int(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"duration {value!r} must be positive (greater than zero)")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """Render seconds the way Prometheus prints durations (``1h30m``, ``32m``, ``11.1s``)."""
    if seconds < 60 and seconds != int(seconds):
        return f"{seconds:.1f}s"
    total = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_datetime(value: object) -> dt.datetime:
    """An ISO 8601 date-time (or a YAML date) in UTC; a bare time means UTC."""
    # PyYAML already turns unquoted ISO timestamps into datetimes; strings come quoted.
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"invalid date-time {value!r}: use ISO 8601, e.g. 2026-07-01T00:00:00Z"
            ) from None
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if not isinstance(value, dt.datetime):
        raise ValueError(f"expected an ISO 8601 date-time, got {value!r}")
    # The API speaks UTC; a bare time means UTC.
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


DateTime = Annotated[dt.datetime, BeforeValidator(parse_datetime)]


def _string_list(value: object) -> list[str]:
    # Strict: `group_ids: g1` is refused rather than read as [g1], so a missing pair
    # of brackets never changes what the file means without a word.
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings, e.g. [a, b]")
    if not all(value):
        raise ValueError("must not contain empty strings")
    return value


StrList = Annotated[list[str], BeforeValidator(_string_list)]


def check_name(value: str) -> str:
    """Check a scenario id or cohort name (from the file or the workspace's lists);
    return it unchanged or raise ValueError. Any printable text is fine (names travel
    percent-encoded or escaped); refused are names no one can read back: empty, with a
    control character, or with leading or trailing whitespace (``"sales "``)."""
    if not value:
        raise ValueError("must not be empty")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"{value!r} contains a control character")
    if value != value.strip():
        raise ValueError(f"{value!r} has leading or trailing whitespace")
    return value


Name = Annotated[str, AfterValidator(check_name)]


def _path(value: object) -> object:
    # Strict mode wants a Path instance; the file has a string, which is what we check.
    if isinstance(value, Path) or (isinstance(value, str) and value):
        return Path(value)
    raise ValueError("must be a file path")


class _Strict(BaseModel):
    # strict: no type coercion ("500" is not an int, "yes" is not a bool).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# --- sections --------------------------------------------------------------


class RateLimit(_Strict):
    """The workspace quota the exporter must stay inside."""

    requests_per_minute: int = Field(60, gt=0)
    requests_per_day: int = Field(1000, gt=0)
    reserve: float = Field(0.1, ge=0, lt=1)

    @property
    def minute_budget(self) -> int:
        """Requests the exporter may send in any rolling minute."""
        return max(1, int(self.requests_per_minute * (1 - self.reserve)))

    @property
    def day_budget(self) -> int:
        """Requests the exporter may send in any rolling 24 hours."""
        return max(1, int(self.requests_per_day * (1 - self.reserve)))


class ApiSettings(_Strict):
    """How to reach the Exec API."""

    base_url: str = "https://api.exec.com/rest/v1"
    api_key_file: Annotated[Path, BeforeValidator(_path)] | None = None
    timeout: Duration = 10.0
    rate_limit: RateLimit = RateLimit()

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must be an http(s) URL, got {value!r}")
        return value.rstrip("/")


class ScenarioConfig(_Strict):
    """One scenario to poll, by slug or UUID."""

    id: Name
    name: str | None = None
    cohorts: StrList | None = None


class CohortConfig(_Strict):
    """A named population filter passed to the summary endpoint."""

    name: Name
    group_ids: StrList = []
    user_ids: StrList = []
    user_emails: StrList = []
    start_date: DateTime | None = None
    end_date: DateTime | None = None
    window: Duration | None = None
    exclude_system_users: bool | None = None

    @model_validator(mode="after")
    def _check_dates(self) -> CohortConfig:
        if self.window is not None and self.start_date is not None:
            raise ValueError("window and start_date exclude each other (window sets start_date)")
        if self.start_date and self.end_date and self.start_date > self.end_date:
            raise ValueError("start_date is after end_date")
        return self

    def query(self, now: float) -> dict[str, str]:
        """The summary endpoint's query parameters for this cohort at time ``now``."""
        lists = {"user_ids": self.user_ids, "user_emails": self.user_emails,
                 "group_ids": self.group_ids}
        params = {name: ",".join(values) for name, values in lists.items() if values}
        start = self.start_date
        if self.window is not None:
            start = dt.datetime.fromtimestamp(now - self.window, dt.UTC)
        if start is not None:
            params["start_date"] = _iso(start)
        if self.end_date is not None:
            params["end_date"] = _iso(self.end_date)
        if self.exclude_system_users is not None:
            params["exclude_system_users"] = "true" if self.exclude_system_users else "false"
        return params


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class ScenarioDiscovery(_Strict):
    """Poll every scenario the list endpoint returns, filtered."""

    visibility: Literal["private", "workspace"] | None = None
    collection_ids: StrList = []
    skill_ids: StrList = []
    include_archived: bool = False
    exclude: StrList = []
    cohorts: StrList | None = None


class GroupCohorts(_Strict):
    """One cohort per workspace group whose name matches ``include``."""

    include: StrList = []
    exclude_system_users: bool | None = None


class DiscoveryConfig(_Strict):
    """Read scenarios and groups from the workspace at start and every ``interval``."""

    interval: Duration = 6 * 3600.0
    scenarios: ScenarioDiscovery | None = None
    group_cohorts: GroupCohorts | None = None


class ListingConfig(_Strict):
    """A workspace-wide listing read every ``interval`` (skills, assignments).

    A section left out of the file is off, so an upgrade never starts spending
    quota on its own; a section that is present is on unless ``enabled: false``.
    """

    enabled: bool = True
    interval: Duration = 3600.0


class PlannerConfig(_Strict):
    """How cohorts are refreshed: one summary request each, or derived from one
    participants pull per scenario and date range when that is cheaper."""

    mode: Literal["auto", "summary"] = "auto"
    cross_check_share: float = Field(0.05, ge=0, lt=1)
    tolerance: float = Field(0.1, ge=0)
    fallback_for: Duration = Field(24 * 3600.0, ge=0)
    membership_interval: Duration = Field(3600.0, gt=0)


class Config(_Strict):
    """The whole configuration file."""

    api: ApiSettings = ApiSettings()
    refresh_interval: Duration = 15 * 60.0
    max_staleness: Duration | None = None
    scenarios: list[ScenarioConfig] = []
    cohorts: list[CohortConfig] = [CohortConfig(name="all")]
    discovery: DiscoveryConfig | None = None
    max_targets: int = Field(500, gt=0)
    skills: ListingConfig | None = None
    assignments: ListingConfig | None = None
    planner: PlannerConfig = PlannerConfig()


# --- loading ---------------------------------------------------------------


def _loc(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith(("function-", "tagged-union")):
            continue  # pydantic's internal validator frames
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


# Pydantic's wording ("Input should be a valid integer, unable to parse string as an
# integer") is written for programmers; these say what the file must hold.
_MESSAGES = {
    "missing": "required",
    **dict.fromkeys(("int_type", "int_parsing", "int_from_float"), "must be a whole number"),
    **dict.fromkeys(("bool_type", "bool_parsing"), "must be true or false"),
    **dict.fromkeys(("float_type", "float_parsing"), "must be a number"),
    "string_type": "must be a string (quote it if it looks like a number or a date)",
    "list_type": "must be a list",
    **dict.fromkeys(("model_type", "dict_type"), "must be a mapping of settings"),
}


def _known_keys(loc: Sequence[int | str]) -> list[str]:
    """The keys the section holding ``loc`` accepts (its last part is the unknown key)."""
    model: type[BaseModel] | None = Config
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue  # a list index: the items' model is the field's
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model class inside ``X``, ``X | None``, ``list[X]`` or ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        loc = error["loc"]
        close = difflib.get_close_matches(str(loc[-1]), _known_keys(loc), n=1, cutoff=0.75)
        return "unknown key" + (f"; did you mean {close[0]}?" if close else "")
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    msg = str(error["msg"]).removeprefix("Value error, ")
    # Range and choice errors ("Input should be less than 1") read well once reworded.
    return "must be " + msg.removeprefix("Input should be ") if msg.startswith(
        "Input should be ") else msg


def _cross_checks(raw: Mapping[str, Any]) -> list[str]:
    """Checks that span sections; run on the raw mapping so they report even when
    other fields are broken."""
    problems: list[str] = []
    cohorts, scenarios, discovery = raw.get("cohorts"), raw.get("scenarios"), raw.get("discovery")
    discovered = discovery.get("scenarios") if isinstance(discovery, dict) else None
    defined: set[str] = set() if isinstance(cohorts, list) else {"all"}
    for i, cohort in enumerate(cohorts if isinstance(cohorts, list) else []):
        name = cohort.get("name") if isinstance(cohort, dict) else None
        if _seen_before(defined, name):
            problems.append(f"cohorts[{i}].name: duplicate cohort name {name!r}")
    if cohorts == []:
        problems.append("cohorts: must list at least one cohort (or be left out)")
    refs = partial(_cohort_refs, problems, defined=defined, implicit_all=cohorts is None)
    ids: set[str] = set()
    for i, scenario in enumerate(scenarios if isinstance(scenarios, list) else []):
        if isinstance(scenario, dict):
            if _seen_before(ids, scenario.get("id")):
                problems.append(f"scenarios[{i}].id: duplicate scenario {scenario['id']!r}")
            refs(f"scenarios[{i}].cohorts", scenario.get("cohorts"), patterns=False)
    if scenarios == [] and discovered is None:
        problems.append("scenarios: list at least one scenario (or configure discovery)")
    elif scenarios is None and discovered is None:
        problems.append("scenarios: required (at least one scenario, or discovery.scenarios)")
    if isinstance(discovered, dict):
        refs("discovery.scenarios.cohorts", discovered.get("cohorts"), patterns=True)
    return problems


def _seen_before(seen: set[str], name: object) -> bool:
    """Whether ``name`` (a string) is in ``seen``; it is from now on."""
    if not isinstance(name, str):
        return False
    if name in seen:
        return True
    seen.add(name)
    return False


def is_pattern(entry: str) -> bool:
    """Whether a ``discovery.scenarios.cohorts`` entry is a shell pattern (``sales-*``)."""
    return any(c in entry for c in "*?[")


def _cohort_refs(problems: list[str], where: str, wanted: object, defined: set[str],
                 patterns: bool, implicit_all: bool) -> None:
    """Add the problems with a list of cohort names; a pattern (where allowed) is checked
    at run time, against the group cohorts too."""
    if not isinstance(wanted, list):
        return  # absent, or the wrong type (the model reports that)
    if not wanted:
        problems.append(f"{where}: must name at least one cohort (or be left out for every "
                        "cohort)")
    hint = " (without a cohorts section there is only 'all')" if implicit_all else ""
    problems.extend(f"{where}[{j}]: no cohort named {name!r} is defined{hint}"
                    for j, name in enumerate(wanted) if isinstance(name, str)
                    and name not in defined and not (patterns and is_pattern(name)))


def parse_config(raw: object) -> Config:
    """Validate a mapping (as read from YAML) into a :class:`Config`, or raise ConfigError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise ConfigError([f"(top level): expected a mapping of settings, got {kind}"])
    try:
        config: Config | None = Config.model_validate(raw)
        problems = []
    except ValidationError as exc:
        config, problems = None, [f"{_loc(error['loc'])}: {_message(error)}"
                                  for error in exc.errors()]
    problems.extend(_cross_checks(raw))
    if problems or config is None:
        raise ConfigError(list(dict.fromkeys(problems)))
    return config


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the plain loader
    keeps the last silently: an appended `refresh_interval` overrode the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the YAML file at ``path``; raise ConfigError listing every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        where = "" if Path(path).is_absolute() else f" in {Path.cwd()}"
        raise ConfigError([f"{path}: no such file{where}; pass --config.file=PATH or create "
                           f"one from the example: cp config.example.yaml {path}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a configuration file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {exc.__class__.__name__}"]) from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}{where}: YAML syntax error: {problem}"]) from None
    return parse_config(raw)


@dataclass(frozen=True)
class ApiKey:
    """The bearer key, kept out of reprs, logs and tracebacks."""

    value: str
    source: str  # "file /path" or "environment variable EXEC_API_KEY"

    def __repr__(self) -> str:
        return f"ApiKey(<redacted>, source={self.source!r})"

    __str__ = __repr__


def load_api_key(config: Config, environ: Mapping[str, str] | None = None
                 ) -> tuple[ApiKey | None, list[str]]:
    """Find the key: ``api.api_key_file`` wins, else ``$EXEC_API_KEY``. Returns the key
    (or None) and warnings to log (a key file other users can read); a key file that is
    set but unreadable is a ConfigError."""
    path = config.api.api_key_file
    if path is None:
        value = (os.environ if environ is None else environ).get(API_KEY_ENV, "").strip()
        source = f"environment variable {API_KEY_ENV}"
        if value:
            _check_key(value, source)
        return (ApiKey(value, source) if value else None), []
    where = f"api.api_key_file: {str(path)!r}"
    try:
        mode = path.stat().st_mode
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError([f"api.api_key_file: cannot read {str(path)!r}: "
                           f"{exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise InvalidApiKey([
            f"{where}: the API key cannot be sent in an HTTP header: byte "
            f"0x{exc.object[exc.start]:02X} at position {exc.start + 1} is not UTF-8 text; "
            "a key is printable ASCII"]) from None
    if not value:
        raise ConfigError([f"{where} is empty"])
    _check_key(value, where)
    warnings = ([f"api key file {str(path)!r} is readable by other users; chmod 600 it"]
                if mode & stat.S_IROTH else [])
    return ApiKey(value, f"file {path}"), warnings


# A bearer token is printable ASCII (RFC 6750's token68 is narrower still); anything
# else either cannot be encoded in an HTTP header at all (smart quotes, non-latin-1
# letters), breaks the header (line breaks, control characters) or is a paste mistake
# no workspace key contains (spaces, quotation marks).
_KEY_QUOTES = "\"'`"
_CONTROL_NAMES = {"\t": "CHARACTER TABULATION (a tab)", "\n": "LINE FEED (a line break)",
                  "\r": "CARRIAGE RETURN (a line break)", "\x00": "NULL"}


def describe_character(char: str) -> str:
    """``U+201C LEFT DOUBLE QUOTATION MARK``: a character named so a reader can find it."""
    if "\udc80" <= char <= "\udcff":  # how Python keeps a byte of the environment that is not UTF-8
        return f"byte 0x{ord(char) - 0xDC00:02X} (not UTF-8)"
    name = _CONTROL_NAMES.get(char) or unicodedata.name(char, "") or (
        "a control character" if unicodedata.category(char).startswith("C") else "unnamed")
    return f"U+{ord(char):04X} {name}"


def _check_key(value: str, where: str) -> None:
    """Refuse a key that cannot travel in an ``Authorization`` header, naming each bad
    character and its position, never the key itself."""
    bad = [(i, c) for i, c in enumerate(value, 1)
           if not ("!" <= c <= "~") or c in _KEY_QUOTES]
    if not bad:
        return
    shown = ", ".join(f"{describe_character(c)} at position {i}"
                      f"{f' of {len(value)}' if n == 0 else ''}"
                      for n, (i, c) in enumerate(bad[:3]))
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    hint = ("remove the quotation marks around it"
            if any(c in "\u201c\u201d\u2018\u2019\"'`" for _, c in bad)
            else "a key is printable ASCII: no spaces, line breaks or accented letters")
    raise InvalidApiKey([f"{where}: the API key cannot be sent in an HTTP header: "
                         f"{shown}{more}; {hint}"])
