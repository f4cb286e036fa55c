"""Checks of the Kubernetes manifests (k8s/) and the Grafana dashboard
(deploy/grafana/gateway.json), run by gateway/tests/it/k8s.rs on `kustomize build`
output. Each command prints one JSON line last: {"ok": true, ...} or exits 1 with
the problems found.

- `validate VERSION FILE...`: every object against the Kubernetes VERSION OpenAPI
  schemas (PyPI kubernetes-validate, offline, strict: unknown fields fail). The
  Prometheus Operator kinds (ServiceMonitor, PrometheusRule) have no schema there:
  they are skipped by name and checked by `check_crd` instead. Then the objects
  are checked against one another (selectors, port names, references).
- `describe FILE`: what the Deployment `gateway` asks of the binary: its ports,
  probes, environment (with where each value comes from) and the gateway TOML its
  GATEWAY_CONFIG path resolves to through the mounted ConfigMap.
- `metrics SCRAPED FILE... --adapter RULES --dashboard JSON`: every metric named
  in the HPAs, the adapter rules, the PrometheusRule expressions and the
  dashboard's queries is one the gateway exports (SCRAPED: one name per line, from
  a real node's /metrics) or a known metric of Prometheus, cAdvisor or
  kube-state-metrics.
"""

import json
import re
import sys
import tomllib

import yaml

CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}

# Metrics not from the gateway that the queries may use, and where they come from.
OTHER_METRICS = {
    "up": "Prometheus (scrape health)",
    "kube_deployment_status_replicas_available": "kube-state-metrics",
    "container_cpu_usage_seconds_total": "cAdvisor (kubelet)",
    "container_memory_working_set_bytes": "cAdvisor (kubelet)",
}

# PromQL words that are not metric names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bool", "bottomk",
    "by", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "count",
    "count_over_time", "count_values", "delta", "deriv", "floor", "group",
    "group_left", "group_right", "histogram_quantile", "holt_winters", "idelta",
    "ignoring", "increase", "inf", "irate", "label_join", "label_replace",
    "label_values", "last_over_time", "max", "max_over_time", "min",
    "min_over_time", "nan", "offset", "on", "or", "and", "unless",
    "predict_linear", "quantile", "quantile_over_time", "rate", "resets", "round",
    "scalar", "sort", "sort_desc", "stddev", "stddev_over_time", "stdvar", "sum",
    "sum_over_time", "time", "timestamp", "topk", "vector", "without",
}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, what):
        self.items.append(f"{where}: {what}")

    def finish(self, **report):
        if self.items:
            for p in self.items:
                print(p, file=sys.stderr)
            print(json.dumps({"ok": False, "problems": self.items}))
            sys.exit(1)
        print(json.dumps({"ok": True, **report}))


def load(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def find(docs, kind, name=None):
    found = [d for d in docs if d.get("kind") == kind]
    if name is not None:
        found = [d for d in found if d["metadata"]["name"] == name]
    return found


def gateway_deployment(docs):
    found = find(docs, "Deployment", "gateway")
    if len(found) != 1:
        raise SystemExit(f"expected one Deployment gateway, found {len(found)}")
    return found[0]


def container_of(deployment):
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# --- validate ---------------------------------------------------------------


def check_crd(doc, problems):
    """The Prometheus Operator kinds, by hand: the fields the operator needs."""
    where = name_of(doc)
    spec = doc.get("spec") or {}
    if doc["kind"] == "ServiceMonitor":
        if not spec.get("selector", {}).get("matchLabels"):
            problems.add(where, "spec.selector.matchLabels is empty")
        endpoints = spec.get("endpoints") or []
        if not endpoints:
            problems.add(where, "no endpoints")
        for e in endpoints:
            if not e.get("port"):
                problems.add(where, f"endpoint without a port name: {e}")
            extra = set(e) - {"port", "path", "interval", "scrapeTimeout", "scheme"}
            if extra:
                problems.add(where, f"unexpected endpoint fields {sorted(extra)}")
    else:
        groups = spec.get("groups") or []
        if not groups:
            problems.add(where, "no rule groups")
        for g in groups:
            for r in g.get("rules") or []:
                rule = r.get("alert") or r.get("record")
                if not rule or not isinstance(r.get("expr"), str):
                    problems.add(where, f"rule without a name or an expr: {r}")
                    continue
                if "alert" in r:
                    if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                        problems.add(where, f"{rule}: labels.severity missing")
                    if not r.get("annotations", {}).get("summary"):
                        problems.add(where, f"{rule}: annotations.summary missing")
                    if not re.fullmatch(r"\d+[smh]", str(r.get("for", "0m"))):
                        problems.add(where, f"{rule}: bad for {r.get('for')!r}")
                if r["expr"].count("(") != r["expr"].count(")"):
                    problems.add(where, f"{rule}: unbalanced parentheses")


def check_references(docs, problems, file):
    """Objects of one rendered overlay agree with one another."""
    dep = gateway_deployment(docs)
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    if not selects(dep["spec"]["selector"], labels):
        problems.add(file, "the Deployment's selector does not select its pods")
    container = container_of(dep)
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    service_ports = {}
    for svc in find(docs, "Service", "gateway"):
        if svc["spec"]["selector"] != dep["spec"]["selector"]["matchLabels"]:
            problems.add(file, "Service gateway does not select the gateway pods")
        for p in svc["spec"]["ports"]:
            service_ports[p["name"]] = p
            if p["targetPort"] not in ports:
                problems.add(file, f"Service port {p['name']} targets unknown {p['targetPort']}")
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        for d in find(docs, kind, "gateway"):
            sel = d["spec"]["selector"] if kind == "PodDisruptionBudget" else d["spec"]["podSelector"]
            if not selects(sel, labels):
                problems.add(file, f"{kind} gateway does not select the gateway pods")
            for rule in d["spec"].get("ingress", []) if kind == "NetworkPolicy" else []:
                for p in rule.get("ports", []):
                    if p["port"] not in ports:
                        problems.add(file, f"NetworkPolicy names unknown port {p['port']}")
    for hpa in find(docs, "HorizontalPodAutoscaler"):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", "gateway"):
            problems.add(file, f"HPA targets {ref}")
    for ing in find(docs, "Ingress"):
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                if backend["name"] != "gateway" or backend["port"].get("name") != "client":
                    problems.add(file, f"Ingress routes {path['path']} to {backend}, not gateway:client")
                if path["path"] != "/connection/websocket":
                    problems.add(file, f"Ingress routes {path['path']}: only the WebSocket path is public")
    for sm in find(docs, "ServiceMonitor"):
        for e in sm["spec"]["endpoints"]:
            if e["port"] not in service_ports:
                problems.add(file, f"ServiceMonitor scrapes unknown Service port {e['port']}")
            elif service_ports[e["port"]]["targetPort"] != "admin":
                problems.add(file, "ServiceMonitor does not scrape the admin listener")
    configmaps = {d["metadata"]["name"] for d in find(docs, "ConfigMap")}
    for v in pod["spec"].get("volumes", []):
        if "configMap" in v and v["configMap"]["name"] not in configmaps:
            problems.add(file, f"volume {v['name']}: no ConfigMap {v['configMap']['name']}")


def validate(version, files):
    import kubernetes_validate

    problems = Problems()
    counts = {}
    skipped = []
    for file in files:
        docs = load(file)
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in CRD_KINDS:
                skipped.append(f"{file}: {name_of(doc)}")
                check_crd(doc, problems)
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                problems.add(f"{file}: {name_of(doc)}", f"{path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.add(f"{file}: {name_of(doc)}", f"no schema: {e}")
            counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
        check_references(docs, problems, file)
    problems.finish(version=version, validated=counts, crds_checked_by_hand=skipped)


# --- describe ---------------------------------------------------------------


def describe(file):
    docs = load(file)
    dep = gateway_deployment(docs)
    spec = dep["spec"]["template"]["spec"]
    container = container_of(dep)
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    probes = []
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if probe is None:
            continue
        get = probe["httpGet"]
        port = get["port"]
        probes.append({
            "probe": kind,
            "path": get["path"],
            "port": ports[port] if isinstance(port, str) else port,
            "period": probe.get("periodSeconds", 10),
            "failure_threshold": probe.get("failureThreshold", 3),
        })
    env = []
    for e in container.get("env", []):
        src = e.get("valueFrom")
        if src is None:
            env.append({"name": e["name"], "value": e.get("value", "")})
        elif "secretKeyRef" in src:
            env.append({"name": e["name"], "secret_key": src["secretKeyRef"]["key"]})
        elif "fieldRef" in src:
            env.append({"name": e["name"], "field": src["fieldRef"]["fieldPath"]})
        else:
            raise SystemExit(f"env {e['name']}: unsupported source {src}")
    config = next((e["value"] for e in env if e["name"] == "GATEWAY_CONFIG"), None)
    if config is None:
        raise SystemExit("the Deployment sets no GATEWAY_CONFIG")
    mount = next(m for m in container.get("volumeMounts", [])
                 if config.startswith(m["mountPath"].rstrip("/") + "/"))
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    key = config[len(mount["mountPath"].rstrip("/")) + 1:]
    cm = find(docs, "ConfigMap", volume["configMap"]["name"])[0]
    print(json.dumps({
        "ok": True,
        "ports": ports,
        "probes": probes,
        "env": env,
        "config_toml": cm["data"][key],
        "termination_grace_period": spec.get("terminationGracePeriodSeconds", 30),
    }))


# --- metrics ----------------------------------------------------------------


def metric_names(expr):
    """The metric names a PromQL expression (or a Grafana query) reads."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)   # strings
    e = re.sub(r"<<[^>]*>>", "", e)                                      # adapter templates
    e = re.sub(r"\{[^{}]*\}", "", e)                                     # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                     # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\blabel_values\(([^,()]*),\s*\w+\s*\)", r"\1", e)              # Grafana label_values(m, label)
    e = re.sub(r"\$\{?\w+\}?", " ", e)                                    # Grafana variables
    e = re.sub(r"\blabel_values\(([^,()]*),\s*\w+\s*\)", r"\1", e)       # Grafana label_values(m, l)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m.group(0)
        if word.lower() in PROMQL_WORDS:
            continue
        if re.match(r"\s*\(", e[m.end():]) and not word.startswith("gateway_"):
            continue                                                     # a function
        names.add(word)
    return names


def dashboard_queries(dash):
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if var.get("type") == "query" and q:
            yield f"variable {var['name']}", q

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield f"panel {p['title']!r} {t.get('refId')}", t["expr"]


def metrics(scraped_file, files, adapter_file, dashboard_file):
    problems = Problems()
    with open(scraped_file, encoding="utf-8") as f:
        scraped = {line.strip() for line in f if line.strip()}
    uses = []   # (where, name)

    adapter = load(adapter_file)[0]
    exposed = set()
    for i, rule in enumerate(adapter.get("rules", [])):
        for field in ("seriesQuery", "metricsQuery"):
            for n in metric_names(rule.get(field, "")):
                uses.append((f"{adapter_file} rule {i} {field}", n))
        series = metric_names(rule["seriesQuery"])
        as_name = rule.get("name", {}).get("as")
        matches = rule.get("name", {}).get("matches")
        for s in series:
            if matches and not re.search(matches, s):
                problems.add(adapter_file, f"rule {i}: name.matches {matches!r} misses {s}")
            exposed.add(as_name or s)

    hpa_pods_metrics = set()
    toml_max = {}
    for file in files:
        docs = load(file)
        for cm in find(docs, "ConfigMap"):
            for key, text in cm.get("data", {}).items():
                if key.endswith(".toml"):
                    toml_max[file] = tomllib.loads(text).get("client", {}).get("max_connections", 500000)
        for hpa in find(docs, "HorizontalPodAutoscaler"):
            for m in hpa["spec"].get("metrics", []):
                if m["type"] == "Pods":
                    name = m["pods"]["metric"]["name"]
                    hpa_pods_metrics.add(name)
                    uses.append((f"{file}: HPA {hpa['metadata']['name']}", name))
                    target = float(m["pods"]["target"]["averageValue"])
                    if name == "gateway_connections" and not target < toml_max.get(file, 0):
                        problems.add(file, f"HPA target {target} connections is not below max_connections")
        for rule_doc in find(docs, "PrometheusRule"):
            for g in rule_doc["spec"]["groups"]:
                for r in g["rules"]:
                    rule = r.get("alert") or r.get("record")
                    for n in metric_names(r["expr"]):
                        uses.append((f"{file}: rule {rule}", n))
                    if rule == "GatewayConnectionsNearMax" and f"* {toml_max.get(file)}" not in r["expr"]:
                        problems.add(file, f"{rule} does not use max_connections {toml_max.get(file)}")
    for name in hpa_pods_metrics - exposed:
        problems.add(adapter_file, f"the HPA reads {name}, which no adapter rule exposes")

    with open(dashboard_file, encoding="utf-8") as f:
        dash = json.load(f)
    queries = list(dashboard_queries(dash))
    if not queries:
        problems.add(dashboard_file, "no queries found")
    for where, q in queries:
        names = metric_names(q)
        if not names:
            problems.add(dashboard_file, f"{where}: no metric in {q!r}")
        for n in names:
            uses.append((f"{dashboard_file} {where}", n))

    checked = set()
    for where, name in uses:
        checked.add(name)
        if name.startswith("gateway_"):
            if name not in scraped:
                problems.add(where, f"{name} is not a metric the gateway exports")
        elif name not in OTHER_METRICS:
            problems.add(where, f"{name} is neither a gateway metric nor a known one")
    problems.finish(metrics=sorted(checked), references=len(uses), dashboard_queries=len(queries))


def main(argv):
    if len(argv) >= 3 and argv[1] == "validate":
        validate(argv[2], argv[3:])
    elif len(argv) == 3 and argv[1] == "describe":
        describe(argv[2])
    elif len(argv) >= 7 and argv[1] == "metrics" and argv[-4] == "--adapter" and argv[-2] == "--dashboard":
        metrics(argv[2], argv[3:-4], argv[-3], argv[-1])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
