"""Flags, environment, defaults, and one clear line per problem."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from ollama_metrics_proxy.app.cli import main
from ollama_metrics_proxy.config import (
    DEFAULT_METRICS_PORT,
    Config,
    HostPort,
    build_arg_parser,
    load_config,
    upstream_from_ollama_host,
)


def load(argv: list[str], env: dict[str, str] | None = None) -> tuple[Config | None, list[str]]:
    return load_config(build_arg_parser().parse_args(argv), env or {})


def test_defaults_listen_on_loopback() -> None:
    config, errors = load([], {"XDG_DATA_HOME": "/data"})
    assert errors == []
    assert config is not None
    # The request log is on by default, in an SQLite file under the data directory; content is never kept.
    assert config.log_db is not None and config.log_db.endswith("/ollama-metrics-proxy/requests.sqlite3")
    assert config.log_content is False and config.admin_token is None
    assert replace(config, log_db=None, models_dir=None) == Config()
    assert config.listen == HostPort("127.0.0.1", 11435)
    assert config.metrics_listen == HostPort("127.0.0.1", DEFAULT_METRICS_PORT)
    assert 9100 <= DEFAULT_METRICS_PORT <= 9999
    assert DEFAULT_METRICS_PORT not in (9100, 9400, 9497, 9835)
    assert config.upstream == "http://127.0.0.1:11434"


def test_environment_is_read_and_flags_win() -> None:
    env = {"OLLAMA_METRICS_PROXY_UPSTREAM": "http://gpu-box:11434", "OLLAMA_METRICS_PROXY_MAX_MODELS": "7",
           "OLLAMA_METRICS_PROXY_LOG_FORMAT": "JSON"}
    config, _ = load([], env)
    assert config is not None
    assert (config.upstream, config.max_models, config.log_format) == ("http://gpu-box:11434", 7, "json")
    config, _ = load(["--upstream", "http://other:1234/", "--max-models", "3"], env)
    assert config is not None
    assert (config.upstream, config.max_models) == ("http://other:1234", 3)


@pytest.mark.parametrize(("ollama_host", "upstream"), [
    ("0.0.0.0", "http://127.0.0.1:11434"),
    ("0.0.0.0:8080", "http://127.0.0.1:8080"),
    ("gpu-box", "http://gpu-box:11434"),
    ("https://ollama.internal:443/prefix/", "https://ollama.internal:443/prefix"),
    ("[::]:11434", "http://127.0.0.1:11434"),
    ("[::1]:9000", "http://[::1]:9000"),
])
def test_ollama_host_is_only_a_fallback(ollama_host: str, upstream: str) -> None:
    assert upstream_from_ollama_host(ollama_host) == upstream
    config, _ = load([], {"OLLAMA_HOST": ollama_host})
    assert config is not None and config.upstream == upstream
    config, _ = load([], {"OLLAMA_HOST": ollama_host, "OLLAMA_METRICS_PROXY_UPSTREAM": "http://x:1"})
    assert config is not None and config.upstream == "http://x:1"


def test_every_problem_is_reported_at_once() -> None:
    config, errors = load(
        ["--upstream", "ftp://nope", "--listen", "127.0.0.1:99999", "--connect-timeout", "-1",
         "--log-level", "loud"],
        {"OLLAMA_METRICS_PROXY_METRICS_LISTEN": "localhost"},
    )
    assert config is None
    assert len(errors) == 5
    assert errors[0].startswith("--upstream must be an http:// or https:// URL")
    assert "OLLAMA_METRICS_PROXY_METRICS_LISTEN needs a port" in errors[2]
    assert all("\n" not in error for error in errors)


def test_same_port_for_both_listeners_is_refused() -> None:
    _, errors = load(["--listen", "127.0.0.1:9000", "--metrics-listen", "127.0.0.1:9000"])
    assert errors == ["--listen and --metrics-listen are both 127.0.0.1:9000; give them different ports"]


def test_cli_exit_status_2_and_one_line_per_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--upstream", "nope", "--max-models", "zero"], environ={}) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "ollama-metrics-proxy: error: --upstream must be an http:// or https:// URL, got 'nope'",
        "ollama-metrics-proxy: error: --max-models must be a whole number of at least 1, got 'zero'",
    ]


def test_unknown_option_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--no-such-flag"], environ={})
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "ollama-metrics-proxy: error: unrecognized arguments: --no-such-flag (see --help)\n")


def test_check_config_prints_the_effective_configuration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check-config", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"], environ={}) == 0
    out = capsys.readouterr().out
    assert "configuration is valid" in out
    assert "upstream = http://127.0.0.1:11434" in out


@pytest.mark.parametrize("upstream", ["http://ops:s3cret@gpu-box:99999", "http://ops:s3cret@gpu-box/?x=1",
                                      "ftp://ops:s3cret@gpu-box"])
def test_upstream_errors_never_show_the_password(upstream: str) -> None:
    config, errors = load(["--upstream", upstream])
    assert config is None and errors
    assert all("s3cret" not in error for error in errors) and any("ops:***@" in error for error in errors)


def test_summary_redacts_upstream_credentials() -> None:
    config, _ = load(["--upstream", "https://ops:s3cret@gpu-box:11434", "--log-db", "off"])
    assert config is not None
    assert config.summary()["upstream"] == "https://ops:***@gpu-box:11434"
    assert config.upstream == "https://ops:s3cret@gpu-box:11434"  # still used to connect


@pytest.mark.parametrize(("content", "message"), [
    ("basic_auth_users:\n  prometheus: plain-text\n", "must be a bcrypt hash"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", "cannot load cert_file"),
    ("tls_server_config:\n  key_file: k\n", "needs cert_file and key_file"),
    ("basic_auth: {}\n", "unknown section 'basic_auth'"),
    ("[not, a, mapping]\n", "must be a mapping"),
    ("tls_server_config: {cert_file: a, key_file: b\n", "not valid YAML"),
])
def test_web_config_file_problems_are_one_line_each(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "web.yml"
    path.write_text(content)
    config, errors = load(["--web-config-file", str(path)])
    assert config is None and len(errors) == 1 and message in errors[0], errors


def test_a_missing_web_config_file_is_a_config_error(tmp_path: Path) -> None:
    config, errors = load(["--web-config-file", str(tmp_path / "nope.yml")])
    assert config is None and "cannot read" in errors[0]


def test_a_bad_url_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--upstream", "http://[::1"], environ={}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "--upstream is not a URL" in err


@pytest.mark.parametrize(("log_db", "message"), [
    ("/no/such/dir/requests.sqlite3", "does not exist"),
    ("{tmp}", "is a directory"),
])
def test_a_log_db_that_cannot_be_created_is_an_error(tmp_path: Path, log_db: str, message: str) -> None:
    config, errors = load(["--log-db", log_db.format(tmp=tmp_path)])
    assert config is None and message in errors[0]


def test_the_metrics_listener_example_shows_its_own_port() -> None:
    _, errors = load(["--metrics-listen", "127.0.0.1"])
    assert "127.0.0.1:9934" in errors[0] and "11435" not in errors[0]


def test_help_names_values_as_the_readme_does_and_shows_real_defaults() -> None:
    from ollama_metrics_proxy.config import OPTIONS

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    documented = dict(re.findall(r"^\| `(--[a-z-]+) ([^`]+)`", readme, flags=re.MULTILINE))
    text = build_arg_parser().format_help()
    for option in OPTIONS:
        metavar = documented[option.flag].replace("\\|", "|")
        assert f"{option.flag} {metavar}" in text, option.flag
    assert "default ]" not in text and "default  " not in text


def test_configuration_printout_says_on_and_off(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check-config", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                 "--log-db", "off"], environ={}) == 0
    out = capsys.readouterr().out
    assert "log_content = off" in out and "host_metrics = on" in out
    assert "True" not in out and "None" not in out


@pytest.mark.parametrize(("value", "message"), [
    ("0", "--workers must be a whole number of at least 1, got '0'"),
    ("two", "--workers must be a whole number of at least 1, got 'two'"),
    ("65", "--workers must be at most 64, got '65'"),
])
def test_a_bad_worker_count_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str], value: str,
                                                      message: str) -> None:
    assert main(["--workers", value], environ={}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_workers_default_to_one_and_are_read_from_the_environment() -> None:
    config, errors = load([], {"OLLAMA_METRICS_PROXY_WORKERS": "4"})
    assert errors == [] and config is not None and config.workers == 4
    config, _ = load([])
    assert config is not None and config.workers == 1
