"""Writes the Grafana dashboards in this folder: python dashboards/generate.py

The JSON files are generated so that every panel follows the same rules (the datasource variable, the instance
and model filters, $__rate_interval, a unit and a description); the test suite checks the committed files
match this script and evaluates every query against a real Prometheus.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance", model=~"$model"'  # the filter every traffic query carries
# Latency, token and error panels also follow the endpoint variable, whose default is the inference routes only:
# a model pull taking minutes must not own the p99 of chat latency.
ESEL = SEL + ', endpoint=~"$endpoint"'
INST = 'instance=~"$instance"'
RI = "$__rate_interval"
# Cloud models run on ollama.com: GPU figures per token leave their tokens out (ollama_model_location_info).
CLOUD_MODELS = 'ollama_model_location_info{location="cloud"}'
INFERENCE = ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings", "/v1/chat/completions",
             "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"]
TOKENS_PER_SECOND = "tok/s"  # Grafana shows an unknown unit as a suffix
# The one definition of an error (see README, "outcome"): failures on the server's side.
ERROR_OUTCOMES = "server_error|upstream_error|upstream_unreachable|timeout|busy"


def variables(model_source: str | None) -> dict[str, Any]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1,
        }

    found = [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0},
        query_var("instance", "Proxy", "label_values(ollama_metrics_proxy_build_info, instance)"),
    ]
    if model_source is not None:  # the GPU dashboard has none: a GPU's figures belong to no one model
        found.append(query_var("model", "Model", f'label_values({model_source}{{instance=~"$instance"}}, model)'))
        endpoint = query_var("endpoint", "Endpoint",
                             f'label_values({model_source}{{instance=~"$instance"}}, endpoint)')
        endpoint["current"] = {"selected": True, "text": INFERENCE, "value": INFERENCE}
        found.append(endpoint)
    return {"list": found}


class Layout:
    """Places panels left to right, 24 grid units per row."""

    def __init__(self) -> None:
        self.x = self.y = 0
        self.next_id = 1

    def place(self, width: int, height: int) -> dict[str, int]:
        if self.x + width > 24:
            self.x, self.y = 0, self.y + height
        position = {"x": self.x, "y": self.y, "w": width, "h": height}
        self.x += width
        return position


def panel(layout: Layout, title: str, description: str, unit: str, targets: list[tuple[str, str]],
          kind: str = "timeseries", width: int = 12, height: int = 8, **options: Any) -> dict[str, Any]:
    panel_id = layout.next_id
    layout.next_id += 1
    result: dict[str, Any] = {
        "id": panel_id, "type": kind, "title": title, "description": description,
        "datasource": DATASOURCE, "gridPos": layout.place(width, height),
        "fieldConfig": {"defaults": {"unit": unit, **options.pop("defaults", {})}, "overrides": []},
        "options": options or {"legend": {"displayMode": "list", "placement": "bottom"},
                                "tooltip": {"mode": "multi"}},
        "targets": [
            {"refId": chr(ord("A") + index), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for index, (expr, legend) in enumerate(targets)
        ],
    }
    return result


def quantiles(metric: str, by: str = "") -> list[tuple[str, str]]:
    group = f"{by}, le" if by else "le"
    return [
        (f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{ESEL}}}[{RI}])))",
         f"p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""))
        for q in (0.5, 0.95, 0.99)
    ]


def stat(layout: Layout, title: str, description: str, unit: str, expr: str, **defaults: Any) -> dict[str, Any]:
    """A headline number, four grid units wide."""
    return panel(layout, title, description, unit, [(expr, title)], kind="stat", width=4, height=4,
                 defaults=defaults, reduceOptions={"calcs": ["lastNotNull"], "fields": "", "values": False},
                 colorMode="value", graphMode="area", textMode="value")


def heatmap(layout: Layout, title: str, description: str, unit: str, metric: str) -> dict[str, Any]:
    return panel(layout, title, description, unit,
                 [(f"sum by (le) (increase({metric}_bucket{{{ESEL}}}[{RI}]))", "{{le}}")], kind="heatmap",
                 calculate=False, yAxis={"unit": unit}, color={"scheme": "Oranges", "mode": "scheme"},
                 cellGap=1, tooltip={"mode": "single", "yHistogram": True})


def ratio(selector: str) -> str:
    """Requests matching ``selector`` as a share of all, over the dashboard's filters."""
    return (f"sum(rate(ollama_requests_total{{{ESEL}, {selector}}}[{RI}])) / "
            f"sum(rate(ollama_requests_total{{{ESEL}}}[{RI}]))")


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]],
              model_source: str | None) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["ollama", "llm"],
        "editable": True, "schemaVersion": 39, "version": 1, "refresh": "30s", "timezone": "",
        "time": {"from": "now-6h", "to": "now"}, "graphTooltip": 1,
        "templating": variables(model_source), "annotations": {"list": []}, "panels": panels,
        "links": [{"title": "Ollama GPU" if uid == "ollama-overview" else "Ollama overview", "type": "link",
                   "url": "/d/ollama-gpu" if uid == "ollama-overview" else "/d/ollama-overview"}],
    }


def overview() -> dict[str, Any]:
    layout = Layout()
    panels = [
        # The headline row: the first questions, answered at a glance.
        stat(layout, "Ollama up", "1 while the proxy's polls of Ollama succeed; 0 means every request fails.",
             "none", f"min(ollama_up{{{INST}}})", min=0, max=1,
             mappings=[{"type": "value", "options": {"0": {"text": "down", "color": "red"},
                                                      "1": {"text": "up", "color": "green"}}}]),
        stat(layout, "Requests/s", "Requests per second relayed to Ollama, all routes.", "reqps",
             f"sum(rate(ollama_requests_total{{{SEL}}}[{RI}]))"),
        stat(layout, "Error ratio", "Failures on the server's side (5xx, upstream errors, unreachable, timeouts) "
             "as a share of inference requests; client errors and aborts are not errors.", "percentunit",
             ratio(f'outcome=~"{ERROR_OUTCOMES}"'), min=0, max=1),
        stat(layout, "Generated tok/s", "Tokens generated per second across the selected models (estimates "
             "included).", TOKENS_PER_SECOND, f"sum(rate(ollama_generation_tokens_total{{{ESEL}}}[{RI}]))"),
        stat(layout, "Models loaded", "Models Ollama holds in memory now (/api/ps).", "none",
             f"sum(ollama_models_loaded{{{INST}}})"),
        stat(layout, "GPU utilization", "Average share of time a kernel ran, over every GPU.", "percentunit",
             f"avg(ollama_gpu_utilization_ratio{{{INST}}})", min=0, max=1),
        # The operations row: what to change on the server, read together. Each says what to do when it is red.
        panel(layout, "Operations: slots busy and waiting",
              "Per model: requests running in a parallel slot, requests waiting for one (an estimate), and the "
              "slots the model has (its runner's --parallel where seen). Waiting above zero for long: raise "
              "OLLAMA_NUM_PARALLEL (it costs VRAM per slot) or add a server.", "short",
              [(f"sum by (model) (ollama_requests_in_flight{{{SEL}}}) - sum by (model) "
                f"(ollama_requests_waiting_estimate{{{SEL}}})", "busy {{model}}"),
               (f"sum by (model) (ollama_requests_waiting_estimate{{{SEL}}})", "waiting {{model}}"),
               (f"max by (model) (ollama_model_parallel_slots{{{SEL}}})", "slots {{model}}")], width=6),
        panel(layout, "Operations: goodput",
              "Share of generations that met --slo-ttft and --slo-tpot, the headline of this row. Under 90%: see "
              "the slots panel (queueing: OLLAMA_NUM_PARALLEL), the loads panel (reloads: OLLAMA_KEEP_ALIVE) and "
              "decode speed.", "percentunit",
              [(f'sum(rate(ollama_slo_requests_total{{{ESEL}, result="met"}}[{RI}])) / '
                f"sum(rate(ollama_slo_requests_total{{{ESEL}}}[{RI}]))", "goodput")],
              kind="stat", width=6, defaults={"min": 0, "max": 1},
              reduceOptions={"calcs": ["lastNotNull"], "fields": "", "values": False}, colorMode="value",
              graphMode="area", textMode="value"),
        panel(layout, "Operations: model loads",
              "Model loads requests reported, by cause. expired: raise OLLAMA_KEEP_ALIVE; not_loaded, steady: "
              "raise OLLAMA_MAX_LOADED_MODELS (if VRAM allows); options_changed: keep clients on one num_ctx "
              "(a different num_ctx reloads the model).",
              "short", [(f"sum by (model, cause) (increase(ollama_model_loads_total{{{SEL}}}[{RI}]))",
                         "{{model}} {{cause}}")], width=6),
        panel(layout, "Operations: context window use",
              "p95 share of the loaded model's context window a request used (prompt and generated). Near 1, "
              "Ollama drops history silently or stops at the limit: raise num_ctx (OLLAMA_CONTEXT_LENGTH).",
              "percentunit",
              [(f"histogram_quantile(0.95, sum by (model, le) (rate(ollama_context_window_usage_ratio_bucket"
                f'{{{ESEL}, part="total"}}[{RI}])))', "{{model}}")], width=6, defaults={"min": 0}),
        panel(layout, "Operations: GPU throttling",
              "1 while NVML holds a GPU's clocks down, by reason: thermal or power. Red: check cooling and the "
              "power limit (nvidia-smi -q -d PERFORMANCE); decode speed drops with it.", "short",
              [(f"max by (gpu, reason) (ollama_gpu_clock_throttled{{{INST}}})", "GPU {{gpu}} {{reason}}")],
              width=6),
        panel(layout, "Request rate by model and outcome",
              "Requests per second relayed to Ollama, split by model and by how they ended.", "reqps",
              [(f"sum by (model, outcome) (rate(ollama_requests_total{{{SEL}}}[{RI}]))", "{{model}} {{outcome}}")]),
        panel(layout, "Request duration",
              "Time from a request's arrival at the proxy to the last byte of the reply: p50, p95, p99 of the "
              "selected endpoints (inference routes by default).", "s",
              quantiles("ollama_request_duration_seconds")),
        panel(layout, "Time to first token",
              "Streamed requests: arrival to the first generated text, thinking or tool call (includes queueing "
              "and model load).", "s", quantiles("ollama_time_to_first_token_seconds")),
        heatmap(layout, "Time to first token heatmap",
                "How many streamed requests waited how long for their first token: a band that rises is a queue "
                "building up.", "s", "ollama_time_to_first_token_seconds"),
        panel(layout, "Time to first token and to the answer",
              "Streamed requests, p50 and p95: the first chunk of any kind (thinking included) against the first "
              "chunk of the answer after any thinking, which is what a user waits for from a thinking model. A "
              "wide gap: thinking costs that much latency (turn it off per request with think: false).", "s",
              [(f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{{{ESEL}}}[{RI}])))",
                f"p{int(q * 100)} {name}")
               for metric, name in (("ollama_time_to_first_token_seconds", "first token"),
                                    ("ollama_time_to_first_answer_token_seconds", "first answer token"))
               for q in (0.5, 0.95)]),
        panel(layout, "Thinking, answer and tool calls",
              "Streamed chunks per second by kind (thinking before the answer, or the answer itself) and tool "
              "calls per second: how much of the generation goes into thinking.", "short",
              [(f"sum by (kind) (rate(ollama_output_chunks_total{{{ESEL}}}[{RI}]))", "{{kind}} chunks"),
               (f"sum(rate(ollama_tool_calls_total{{{ESEL}}}[{RI}]))", "tool calls")]),
        panel(layout, "Inter-token latency",
              "Streamed requests: gaps between consecutive generated chunks as clients received them.", "s",
              quantiles("ollama_inter_token_latency_seconds")),
        heatmap(layout, "Generation length heatmap",
                "Generated tokens per request (estimates included): where the bulk of the work is.", "short",
                "ollama_request_generation_tokens"),
        panel(layout, "Prompt and generated tokens per second",
              "Tokens per second across the selected models, as Ollama reported them; 'estimated' is the part "
              "of the generated tokens counted from content chunks where the reply reported no count (OpenAI "
              "streams without include_usage, streams cut short).", TOKENS_PER_SECOND,
              [(f"sum(rate(ollama_prompt_tokens_total{{{ESEL}}}[{RI}]))", "prompt"),
               (f"sum(rate(ollama_generation_tokens_total{{{ESEL}}}[{RI}]))", "generated"),
               (f"sum(rate(ollama_generation_tokens_estimated_total{{{ESEL}}}[{RI}]))", "generated (estimated)")]),
        panel(layout, "Decode speed by model",
              "Generated tokens per second of decode time (eval_count / eval_duration over exactly the requests "
              "that reported both): the GPU's real speed.", TOKENS_PER_SECOND,
              [(f"sum by (model) (rate(ollama_eval_tokens_total{{{ESEL}}}[{RI}])) / "
                f"sum by (model) (rate(ollama_eval_seconds_total{{{ESEL}}}[{RI}]))", "{{model}}")]),
        panel(layout, "Error ratio, client errors and aborts",
              "Shares of requests: errors (the server's failures, the error ratio everywhere), client errors "
              "(4xx: unknown model, bad request) and aborts (the client went away before the end).",
              "percentunit",
              [(ratio(f'outcome=~"{ERROR_OUTCOMES}"'), "error ratio"),
               (ratio('outcome="client_error"'), "client errors"),
               (ratio('outcome="aborted"'), "abort ratio")], defaults={"min": 0}),
        panel(layout, "Errors, client errors and aborted requests",
              "Requests that did not succeed, by outcome. Errors (the error ratio's numerator) are the server's "
              "failures: server_error (5xx), upstream_error (streams cut off, in-band errors), "
              "upstream_unreachable and timeout. client_error (4xx) and clients that went away are shown apart.",
              "reqps",
              [(f'sum by (outcome) (rate(ollama_requests_total{{{ESEL}, outcome=~"{ERROR_OUTCOMES}"}}[{RI}]))',
                "error: {{outcome}}"),
               (f'sum(rate(ollama_requests_total{{{ESEL}, outcome="client_error"}}[{RI}]))', "client_error"),
               (f"sum by (phase) (rate(ollama_client_disconnects_total{{{ESEL}}}[{RI}]))", "disconnect {{phase}}")]),
        panel(layout, "Error replies by status",
              "Replies with an error status per second: 401 is a cloud model without `ollama signin`, 429 the "
              "cloud's rate limit, 502 the cloud out of reach, 503 Ollama's queue full, 404 an unknown model.",
              "reqps",
              [(f"sum by (status) (rate(ollama_error_responses_total{{{ESEL}}}[{RI}]))", "{{status}}")]),
        panel(layout, "In-flight requests",
              "Requests queued in Ollama or generating right now.", "short",
              [(f"sum by (model) (ollama_requests_in_flight{{{SEL}}})", "{{model}}")]),
        panel(layout, "Queue: in flight and waiting",
              "Per model, requests in flight at Ollama and the estimate of those waiting for a parallel slot "
              "(in flight beyond OLLAMA_NUM_PARALLEL; shown only where the slot count is known). Running is the "
              "difference.", "short",
              [(f"sum by (model) (ollama_requests_in_flight{{{SEL}}})", "in flight {{model}}"),
               (f"sum by (model) (ollama_requests_waiting_estimate{{{SEL}}})", "waiting (estimate) {{model}}")]),
        panel(layout, "Queue wait (estimate)",
              "Native inference requests: time Ollama spent outside compute before answering (total minus load, "
              "prompt evaluation and decoding): the wait for a parallel slot, p50/p95/p99.", "s",
              quantiles("ollama_queue_wait_estimate_seconds")),
        panel(layout, "Proxy overhead",
              "The time the proxy itself adds, p50 and p99: request head in to request out to Ollama, and "
              "Ollama's response head in to the response head out to the client.", "s",
              [(f"histogram_quantile({q}, sum by (direction, le) (rate("
                f"ollama_metrics_proxy_overhead_seconds_bucket{{{INST}}}[{RI}])))",
                f"p{int(q * 100)} {{{{direction}}}}") for q in (0.5, 0.99)]),
        panel(layout, "Finish reasons",
              "Why generations stopped: stop, length (hit the token limit), tool calls, …", "reqps",
              [(f"sum by (reason) (rate(ollama_finished_requests_total{{{ESEL}}}[{RI}]))", "{{reason}}")]),
        panel(layout, "Loaded models and VRAM",
              "Models Ollama holds in memory and the GPU memory each occupies.", "bytes",
              [(f"sum by (model) (ollama_model_vram_bytes{{{SEL}}})", "{{model}} VRAM"),
               (f"sum by (model) (ollama_model_size_bytes{{{SEL}}})", "{{model}} total")]),
        panel(layout, "GPU offload per model",
              "Share of each loaded model held on the GPU; below 100% part of it runs on the CPU, slowly.",
              "percentunit",
              [(f"min by (model) (ollama_model_gpu_offload_ratio{{{SEL}}})", "{{model}}")],
              defaults={"min": 0, "max": 1}),
        panel(layout, "Model loads and unloads",
              "Models appearing in and leaving Ollama's memory; a steady stream means thrashing.", "short",
              [(f"sum by (model) (increase(ollama_model_appearances_total{{{SEL}}}[{RI}]))", "load {{model}}"),
               (f"sum by (model) (increase(ollama_model_unloads_total{{{SEL}}}[{RI}]))", "unload {{model}}")]),
        panel(layout, "Ollama processes: CPU",
              "CPU used by the Ollama server and its model runners, in cores.", "short",
              [(f"sum by (role) (rate(ollama_process_cpu_seconds_total{{{INST}}}[{RI}]))", "{{role}}")]),
        panel(layout, "Ollama processes: memory",
              "Resident memory of the Ollama server and its model runners.", "bytes",
              [(f"sum by (role) (ollama_process_resident_memory_bytes{{{INST}}})", "{{role}}")]),
        panel(layout, "Host CPU and memory",
              "The host's CPU busy share and memory in use out of installed.", "percentunit",
              [(f"avg(ollama_host_cpu_utilization_ratio{{{INST}}})", "CPU busy"),
               (f"sum(ollama_host_memory_used_bytes{{{INST}}}) / sum(ollama_host_memory_total_bytes{{{INST}}})",
                "memory used")], defaults={"min": 0, "max": 1}),
        panel(layout, "Models disk",
              "Used and free space on the filesystem holding Ollama's models directory.", "bytes",
              [(f"sum by (path) (ollama_host_models_disk_used_bytes{{{INST}}})", "used {{path}}"),
               (f"sum by (path) (ollama_host_models_disk_free_bytes{{{INST}}})", "free {{path}}")]),
    ]
    return dashboard("ollama-overview", "Ollama overview",
                     "Traffic, latency, tokens and model state of Ollama, measured by ollama-metrics-proxy.",
                     panels, "ollama_requests_total")


def gpu() -> dict[str, Any]:
    layout = Layout()
    gpu_sel = INST
    panels = [
        panel(layout, "GPU utilization", "Share of time a kernel ran on each GPU.", "percentunit",
              [(f"ollama_gpu_utilization_ratio{{{gpu_sel}}}", "GPU {{gpu}} {{instance}}")],
              defaults={"min": 0, "max": 1}),
        panel(layout, "GPU memory", "GPU memory in use and installed.", "bytes",
              [(f"ollama_gpu_memory_used_bytes{{{gpu_sel}}}", "used GPU {{gpu}} {{instance}}"),
               (f"ollama_gpu_memory_total_bytes{{{gpu_sel}}}", "total GPU {{gpu}} {{instance}}")]),
        panel(layout, "GPU temperature", "Core temperature; sustained values above 85 °C throttle clocks.",
              "celsius", [(f"ollama_gpu_temperature_celsius{{{gpu_sel}}}", "GPU {{gpu}} {{instance}}")]),
        panel(layout, "GPU power", "Power draw against the enforced power limit.", "watt",
              [(f"ollama_gpu_power_watts{{{gpu_sel}}}", "draw GPU {{gpu}} {{instance}}"),
               (f"ollama_gpu_power_limit_watts{{{gpu_sel}}}", "limit GPU {{gpu}} {{instance}}")]),
        panel(layout, "Energy per 1,000 generated tokens",
              "GPU energy divided by the tokens generated through the proxy on the same host (cloud models left "
              "out: they ran on ollama.com), in joules per 1,000 tokens.", "joule",
              [(f"1000 * sum by (instance) (rate(ollama_gpu_energy_joules_total{{{gpu_sel}}}[{RI}])) / "
                f"sum by (instance) (rate(ollama_generation_tokens_total{{{gpu_sel}}}[{RI}]) "
                f"unless on (instance, model) {CLOUD_MODELS})", "{{instance}}")]),
        panel(layout, "GPU memory per process",
              "GPU memory held by each process, so the Ollama runner's share shows.", "bytes",
              [(f"ollama_gpu_process_memory_bytes{{{gpu_sel}}}", "{{process}} ({{pid}}) GPU {{gpu}}")]),
        panel(layout, "SM clock", "Streaming-multiprocessor clock; drops under thermal or power throttling.",
              "hertz", [(f"ollama_gpu_sm_clock_hertz{{{gpu_sel}}}", "GPU {{gpu}} {{instance}}")]),
        panel(layout, "Fan speed", "Fan speed as a share of its maximum, where the GPU reports it.",
              "percentunit", [(f"ollama_gpu_fan_ratio{{{gpu_sel}}}", "GPU {{gpu}} {{instance}}")],
              defaults={"min": 0, "max": 1}),
        panel(layout, "Clock throttle reasons",
              "Why the GPU's clocks are held down right now (NVML's clock event reasons): power cap, thermal "
              "or hardware slowdown; idle is harmless.", "short",
              [(f"max by (gpu, reason) (ollama_gpu_clock_throttled{{{gpu_sel}}}) > 0", "GPU {{gpu}} {{reason}}")],
              defaults={"min": 0, "max": 1}),
    ]
    return dashboard("ollama-gpu", "Ollama GPU",
                     "NVIDIA GPU telemetry read by ollama-metrics-proxy through NVML, and energy per token.",
                     panels, None)


DASHBOARDS = {"ollama-overview.json": overview, "ollama-gpu.json": gpu}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    for filename, build in DASHBOARDS.items():
        (HERE / filename).write_text(render(build))
        print(f"wrote {HERE / filename}")
