"""Configuration: parsing, strict types, names, every field's checks, error paths, the key."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import (
    ConfigError,
    format_duration,
    load_api_key,
    load_config,
    parse_config,
    parse_duration,
)
from exporter.targets import build_targets

ROOT = Path(__file__).parent.parent
BAD = Path(__file__).parent / "data" / "bad"

# One fixture file per kind of broken configuration, and the line it must print.
BAD_CASES = {
    "unknown_key.yaml": "refresh_intervall: unknown key",
    "bad_duration.yaml": "refresh_interval: invalid duration '15 minutes'",
    "undefined_cohort.yaml": "scenarios[0].cohorts[1]: no cohort named 'marketing' is defined",
    "duplicate_cohort.yaml": "cohorts[2].name: duplicate cohort name 'sales'",
    "no_scenarios.yaml": "scenarios: required",
    "wrong_type.yaml": "api.rate_limit.requests_per_minute: must be a whole number",
    "window_and_start.yaml": "cohorts[1]: window and start_date exclude each other",
    "yaml_syntax.yaml": "yaml_syntax.yaml:4:1: YAML syntax error",
    "reserve_out_of_range.yaml": "api.rate_limit.reserve: must be less than 1",
    "quoted_number.yaml": "max_targets: must be a whole number",
    "yes_for_true.yaml": "cohorts[0].exclude_system_users: must be true or false",
    "bare_string_list.yaml": "cohorts[0].group_ids: must be a list of strings",
    "control_character.yaml": r"cohorts[0].name: 'sales\nteam' contains a control character",
    "bad_base_url.yaml": "api.base_url: must be an http(s) URL",
    "start_after_end.yaml": "cohorts[0]: start_date is after end_date",
    "not_a_mapping.yaml": "(top level): expected a mapping",
    "bad_date.yaml": "cohorts[0].start_date: invalid date-time 'the first of July'",
    "key_in_yaml.yaml": "api.api_key: unknown key",
}


@pytest.mark.parametrize("name", sorted(BAD_CASES))
def test_each_bad_file_names_the_field(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(BAD / name)
    text = "\n".join(caught.value.problems)
    assert BAD_CASES[name] in text


def test_every_fixture_file_has_a_case() -> None:
    assert {p.name for p in BAD.glob("*.yaml")} - {"many_problems.yaml"} == set(BAD_CASES)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(BAD / "many_problems.yaml")
    problems = caught.value.problems
    joined = "\n".join(problems)
    assert "refresh_interval: invalid duration 'soon'" in joined
    assert "scenarios[1].id" in joined
    assert "cohorts[2].window: invalid duration 'forever'" in joined
    assert "cohorts[1].name: duplicate cohort name 'all'" in joined
    assert "scenarios[0].cohorts[0]: no cohort named 'nobody' is defined" in joined
    assert len(problems) == 5
    assert all("\n" not in p for p in problems)


def test_example_config_is_valid_and_complete() -> None:
    config = load_config(ROOT / "config.example.yaml")
    assert config.refresh_interval == 900
    assert config.api.rate_limit.day_budget == 900
    assert config.api.rate_limit.minute_budget == 54
    keys = [t.key for t in build_targets(config)]
    assert keys == [
        ("discovery-call-it-director", "all"), ("discovery-call-it-director", "sales"),
        ("discovery-call-it-director", "last-7d"), ("renewal-negotiation", "all"),
        ("renewal-negotiation", "sales"), ("renewal-negotiation", "q3-pilot"),
    ]


def test_defaults() -> None:
    config = parse_config({"scenarios": [{"id": "s1"}]})
    assert config.api.base_url == "https://api.exec.com/rest/v1"
    assert config.api.timeout == 10
    assert config.refresh_interval == 900
    assert config.max_staleness is None
    assert config.max_targets == 500
    assert [t.key for t in build_targets(config)] == [("s1", "all")]
    assert build_targets(config)[0].cohort.query(0) == {}


def test_scenario_cohort_subsets_and_default_every_cohort() -> None:
    config = parse_config({
        "scenarios": [{"id": "a", "cohorts": ["x"]}, {"id": "b"}],
        "cohorts": [{"name": "x"}, {"name": "y"}],
    })
    assert [t.key for t in build_targets(config)] == [("a", "x"), ("b", "x"), ("b", "y")]


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30), ("15m", 900), ("6h", 21600), ("7d", 604800), ("1h30m", 5400),
    ("500ms", 0.5), ("1w", 604800),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "15 m", "m", "", "0s", "-5m", "1.5h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(1920) == "32m"
    assert format_duration(5400) == "1h30m"
    assert format_duration(11.1) == "11.1s"


def test_filters_encode_as_the_api_expects() -> None:
    config = parse_config({
        "scenarios": [{"id": "s"}],
        "cohorts": [
            {"name": "q3", "user_ids": ["u1", "u2"], "user_emails": ["a@x.com", "b+c@x.com"],
             "group_ids": ["g1", "g2"], "start_date": "2026-07-01T00:00:00Z",
             "end_date": "2026-09-30T23:59:59+02:00", "exclude_system_users": True},
            {"name": "week", "window": "7d", "exclude_system_users": False},
        ],
    })
    q3, week = config.cohorts
    assert q3.query(0) == {
        "user_ids": "u1,u2", "user_emails": "a@x.com,b+c@x.com", "group_ids": "g1,g2",
        "start_date": "2026-07-01T00:00:00Z", "end_date": "2026-09-30T21:59:59Z",
        "exclude_system_users": "true",
    }
    now = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC).timestamp()
    assert week.query(now) == {"start_date": "2026-11-21T12:00:00Z",
                               "exclude_system_users": "false"}
    # The window rolls with time.
    assert week.query(now + 86400)["start_date"] == "2026-11-22T12:00:00Z"


def test_unquoted_yaml_timestamps_are_accepted(write_config) -> None:
    path = write_config("""
        scenarios: [{id: s}]
        cohorts:
          - name: q3
            start_date: 2026-07-01T00:00:00Z
            end_date: 2026-09-30
    """)
    cohort = load_config(path).cohorts[0]
    assert cohort.query(0)["start_date"] == "2026-07-01T00:00:00Z"
    assert cohort.query(0)["end_date"] == "2026-09-30T00:00:00Z"


def test_a_single_string_where_a_list_is_expected_is_refused(write_config) -> None:
    path = write_config("""
        scenarios: [{id: s, cohorts: sales}]
        cohorts: [{name: sales, group_ids: g1, user_ids: u1, user_emails: a@x.com}]
        discovery: {scenarios: {exclude: old, collection_ids: c1, cohorts: sales}}
    """)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert sorted(caught.value.problems) == [
        f"{field}: must be a list of strings, e.g. [a, b]" for field in sorted([
            "scenarios[0].cohorts", "cohorts[0].group_ids", "cohorts[0].user_ids",
            "cohorts[0].user_emails", "discovery.scenarios.exclude",
            "discovery.scenarios.collection_ids", "discovery.scenarios.cohorts"])]


@pytest.mark.parametrize(("yaml_text", "line"), [
    ('max_targets: "500"', "max_targets: must be a whole number"),
    ("max_targets: 500.0", "max_targets: must be a whole number"),
    ("max_targets: true", "max_targets: must be a whole number"),
    ('api: {rate_limit: {reserve: "0.1"}}', "api.rate_limit.reserve: must be a number"),
    ('api: {rate_limit: {requests_per_day: "1000"}}',
     "api.rate_limit.requests_per_day: must be a whole number"),
    ("discovery: {scenarios: {include_archived: 'no'}}",
     "discovery.scenarios.include_archived: must be true or false"),
    ("discovery: {scenarios: {}, group_cohorts: {exclude_system_users: 1}}",
     "discovery.group_cohorts.exclude_system_users: must be true or false"),
    ("api: {timeout: 10}", "api.timeout: must be a duration such as '10s', '15m' or '7d', got 10"),
    ("refresh_interval: 900", "refresh_interval: must be a duration such as '10s'"),
    ("api: {api_key_file: 5}", "api.api_key_file: must be a file path"),
    ("api: {base_url: 5}", "api.base_url: must be a string"),
    ("api: {rate_limit: 60}", "api.rate_limit: must be a mapping of settings"),
    ("cohorts: all", "cohorts: must be a list"),
    ("discovery: {scenarios: {visibility: public}}",
     "discovery.scenarios.visibility: must be 'private' or 'workspace'"),
    ("api: {rate_limit: {requests_per_minute: 0}}",
     "api.rate_limit.requests_per_minute: must be greater than 0"),
])
def test_types_are_strict_and_errors_are_worded_for_people(write_config, yaml_text: str,
                                                           line: str) -> None:
    path = write_config(f"scenarios: [{{id: s}}]\n{yaml_text}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(line)
    assert "Input should" not in caught.value.problems[0]


def test_numbers_and_booleans_of_the_right_type_are_fine() -> None:
    config = parse_config({"scenarios": [{"id": "s"}], "max_targets": 20,
                           "api": {"rate_limit": {"reserve": 0, "requests_per_day": 500}},
                           "cohorts": [{"name": "all", "exclude_system_users": False}]})
    assert config.max_targets == 20
    assert config.api.rate_limit.day_budget == 500
    assert config.cohorts[0].exclude_system_users is False


@pytest.mark.parametrize("name", ["Sales/EMEA", "Équipe Nord", "CS & Support", "営業チーム",
                                  "a*b", "100% [beta]", "x"])
def test_a_cohort_name_is_any_printable_text(name: str) -> None:
    config = parse_config({"scenarios": [{"id": "s", "cohorts": [name]}],
                           "cohorts": [{"name": name}]})
    assert [t.key for t in build_targets(config)] == [("s", name)]


@pytest.mark.parametrize("sid", ["überblick-ç", "d290f1ee-6c54-4b01-90e6-d701748f0851",
                                 "a/b", "Q3 review", "2024"])
def test_a_scenario_id_is_any_id_or_slug_the_api_returns(sid: str) -> None:
    config = parse_config({"scenarios": [{"id": sid}]})
    assert [t.key for t in build_targets(config)] == [(sid, "all")]


@pytest.mark.parametrize(("name", "problem"), [
    ("", "must not be empty"),
    ("sales\tteam", "contains a control character"),
    ("sales\x7f", "contains a control character"),
    ("sales\u0085", "contains a control character"),
    (" sales", "has leading or trailing whitespace"),
    ("sales ", "has leading or trailing whitespace"),
    ("sales\u00a0", "has leading or trailing whitespace"),
])
def test_names_nobody_could_read_back_are_refused(name: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"scenarios": [{"id": name}], "cohorts": [{"name": name}]})
    problems = caught.value.problems
    assert any(p.startswith("scenarios[0].id: ") and problem in p for p in problems)
    assert any(p.startswith("cohorts[0].name: ") and problem in p for p in problems)


def test_a_number_where_a_name_belongs_asks_for_quotes(write_config) -> None:
    path = write_config("scenarios: [{id: 2024}]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        "scenarios[0].id: must be a string (quote it if it looks like a number or a date)"]


def test_discovered_scenario_cohorts_may_be_patterns_but_plain_names_must_exist() -> None:
    config = parse_config({"cohorts": [{"name": "all"}],
                           "discovery": {"scenarios": {"cohorts": ["all", "sales-*", "[Ss]DR"]},
                                         "group_cohorts": {}}})
    assert config.discovery is not None and config.discovery.scenarios is not None
    assert config.discovery.scenarios.cohorts == ["all", "sales-*", "[Ss]DR"]
    with pytest.raises(ConfigError) as caught:
        parse_config({"discovery": {"scenarios": {"cohorts": ["all", "sales"]}}})
    assert caught.value.problems == [
        "discovery.scenarios.cohorts[1]: no cohort named 'sales' is defined "
        "(without a cohorts section there is only 'all')"]


def test_an_empty_cohort_list_is_refused_rather_than_read_as_every_cohort() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"scenarios": [{"id": "s", "cohorts": []}],
                      "discovery": {"scenarios": {"cohorts": []}}})
    assert sorted(caught.value.problems) == [
        "discovery.scenarios.cohorts: must name at least one cohort (or be left out for "
        "every cohort)",
        "scenarios[0].cohorts: must name at least one cohort (or be left out for every "
        "cohort)"]


def test_discovery_alone_is_enough() -> None:
    config = parse_config({"discovery": {"scenarios": {}}})
    assert build_targets(config) == []
    assert config.discovery is not None and config.discovery.interval == 6 * 3600


def test_missing_file() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("/nonexistent/config.yaml")
    assert caught.value.problems == [
        "/nonexistent/config.yaml: no such file; pass --config.file=PATH or create one from "
        "the example: cp config.example.yaml /nonexistent/config.yaml"]


@pytest.mark.parametrize(("raw", "expected"), [
    ({"refresh_intervall": "5m"}, "refresh_intervall: unknown key; did you mean refresh_interval?"),
    ({"api": {"rate_limit": {"requests_per_minut": 5}}},
     "api.rate_limit.requests_per_minut: unknown key; did you mean requests_per_minute?"),
    ({"cohorts": [{"name": "a"}, {"name": "b", "group_id": ["g"]}]},
     "cohorts[1].group_id: unknown key; did you mean group_ids?"),
    ({"discovery": {"scenarios": {"include_archive": True}}},
     "discovery.scenarios.include_archive: unknown key; did you mean include_archived?"),
    ({"verbose": True}, "verbose: unknown key"),  # nothing close: no guess
])
def test_an_unknown_key_suggests_the_closest_known_one(raw: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"scenarios": [{"id": "s"}], **raw})
    assert caught.value.problems == [expected]


@pytest.mark.parametrize("value", ["-5m", "-1h30m"])
def test_a_negative_duration_must_be_positive(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"scenarios": [{"id": "s"}], "refresh_interval": value})
    assert caught.value.problems == [
        f"refresh_interval: duration {value!r} must be positive, e.g. {value[1:]!r}"]


def test_a_directory_is_not_a_configuration_file(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.problems == [f"{tmp_path}: is a directory, not a configuration file"]
    assert main(["--config.check", f"--config.file={tmp_path}"]) == 2
    assert "is a directory" in capsys.readouterr().err


# --- the key ---------------------------------------------------------------------


def test_key_from_environment() -> None:
    config = parse_config({"scenarios": [{"id": "s"}]})
    key, warnings = load_api_key(config, {"EXEC_API_KEY": " secret-value \n"})
    assert key is not None and key.value == "secret-value"
    assert warnings == []
    assert "secret-value" not in repr(key) and "secret-value" not in str(key)


def test_key_file_wins_and_warns_when_others_can_read_it(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("from-file\n")
    os.chmod(path, 0o644)
    config = parse_config({"api": {"api_key_file": str(path)}, "scenarios": [{"id": "s"}]})
    key, warnings = load_api_key(config, {"EXEC_API_KEY": "from-env"})
    assert key is not None and key.value == "from-file"
    assert len(warnings) == 1 and "readable by other users" in warnings[0]
    assert "from-file" not in warnings[0]
    os.chmod(path, 0o600)
    assert load_api_key(config, {})[1] == []


def test_no_key_anywhere() -> None:
    config = parse_config({"scenarios": [{"id": "s"}]})
    assert load_api_key(config, {}) == (None, [])


def test_unreadable_or_empty_key_file(tmp_path: Path) -> None:
    config = parse_config({"api": {"api_key_file": str(tmp_path / "missing")},
                           "scenarios": [{"id": "s"}]})
    with pytest.raises(ConfigError) as caught:
        load_api_key(config, {})
    assert caught.value.problems[0].startswith("api.api_key_file: cannot read")
    (tmp_path / "empty").write_text("\n")
    config = parse_config({"api": {"api_key_file": str(tmp_path / "empty")},
                           "scenarios": [{"id": "s"}]})
    with pytest.raises(ConfigError, match="is empty"):
        load_api_key(config, {})


def test_planner_section_defaults_and_strict_errors() -> None:
    config = parse_config({"scenarios": [{"id": "x"}]})
    assert (config.planner.mode, config.planner.cross_check_share, config.planner.tolerance,
            config.planner.fallback_for, config.planner.membership_interval) == (
        "auto", 0.05, 0.1, 86400.0, 3600.0)
    with pytest.raises(ConfigError) as caught:
        parse_config({"scenarios": [{"id": "x"}],
                      "planner": {"mode": "fast", "cross_check_share": 1.5,
                                  "tolerance": "0.1", "membership_interval": "0s",
                                  "extra": 1}})
    problems = caught.value.problems
    assert "planner.mode: must be 'auto' or 'summary'" in problems
    assert "planner.cross_check_share: must be less than 1" in problems
    assert "planner.tolerance: must be a number" in problems
    assert any(p.startswith("planner.membership_interval: ") for p in problems)
    assert "planner.extra: unknown key" in problems


def test_an_unsendable_key_names_every_bad_character_and_never_the_key() -> None:
    config = parse_config({"scenarios": [{"id": "s"}]})
    pasted = "\u201cexec_live_\u2026\u201d"  # the paste: smart quotes and an ellipsis
    with pytest.raises(ConfigError) as caught:
        load_api_key(config, {"EXEC_API_KEY": pasted})
    assert caught.value.problems == [
        "environment variable EXEC_API_KEY: the API key cannot be sent in an HTTP header: "
        "U+201C LEFT DOUBLE QUOTATION MARK at position 1 of 13, U+2026 HORIZONTAL ELLIPSIS at "
        "position 12, U+201D RIGHT DOUBLE QUOTATION MARK at position 13; remove the quotation "
        "marks around it"]
    secret = "exec_live_" + "x" * 40
    with pytest.raises(ConfigError) as caught:
        load_api_key(config, {"EXEC_API_KEY": " ".join(secret[i:i + 10] for i in range(0, 50, 10))})
    (problem,) = caught.value.problems
    assert problem.endswith("U+0020 SPACE at position 11 of 54, U+0020 SPACE at position 22, "
                            "U+0020 SPACE at position 33 and 1 more; a key is printable ASCII: "
                            "no spaces, line breaks or accented letters")
    assert "xxxxx" not in problem
    # A plain key passes, whatever printable ASCII it holds.
    key, _ = load_api_key(config, {"EXEC_API_KEY": "exec_live_AZaz09-._~+/="})
    assert key is not None and key.value == "exec_live_AZaz09-._~+/="


def test_a_key_file_that_is_not_utf8_is_refused_naming_the_byte(tmp_path: Path,
                                                                 capsys) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"exec_live_caf\xe9\n")  # latin-1, as an old editor saves it
    config = parse_config({"api": {"api_key_file": str(path)}, "scenarios": [{"id": "s"}]})
    with pytest.raises(ConfigError) as caught:
        load_api_key(config, {})
    assert caught.value.problems == [
        f"api.api_key_file: '{path}': the API key cannot be sent in an HTTP header: byte 0xE9 "
        "at position 14 is not UTF-8 text; a key is printable ASCII"]
    file = tmp_path / "config.yaml"
    file.write_text(f"api: {{api_key_file: {path}}}\nscenarios: [{{id: s}}]\n")
    assert main(["--config.check", f"--config.file={file}"]) == 2  # refused by the check too
    assert "byte 0xE9 at position 14 is not UTF-8 text" in capsys.readouterr().err


def test_a_key_given_twice_is_refused_with_its_line(write_config) -> None:
    # The plain YAML loader keeps the last silently: an appended refresh_interval won.
    path = write_config("refresh_interval: 15m\nscenarios: [{id: s}]\nrefresh_interval: 4h\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}:3:1: YAML syntax error: 'refresh_interval' is given twice in one mapping"]
    nested = write_config("scenarios: [{id: s, name: A, name: B}]\n")
    with pytest.raises(ConfigError, match="'name' is given twice"):
        load_config(nested)
