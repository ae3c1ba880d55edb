"""Offline check of deploy/kubernetes: every manifest deserialises into the Kubernetes API
models of the official Python client (unknown or mistyped fields and missing required fields
fail), and the DaemonSet keeps the properties the README promises; and of deploy/grafana: the
dashboard is one the Grafana sidecar loads and that follows the node it is pointed at. Run by
`cargo xtask test` (tests/prometheus.rs runs every panel's query on a real Prometheus).
"""

import json
import pathlib
import sys

import kubernetes
import yaml

HERE = pathlib.Path(__file__).parent / "kubernetes"
GRAFANA = pathlib.Path(__file__).parent / "grafana"
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
CAPABILITIES = {"BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE", "SYS_PTRACE"}

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)


def strict(obj, model):
    """Deserialise, then reject fields the model does not know (the client ignores them)."""
    client = kubernetes.client.ApiClient()
    # The client's own model deserialiser (the public wrapper's signature varies by version).
    value = client._ApiClient__deserialize(json.loads(json.dumps(obj)), model)
    round_trip = client.sanitize_for_serialization(value)

    def unknown(original, parsed, path):
        if isinstance(original, dict):
            for key, item in original.items():
                if not isinstance(parsed, dict) or key not in parsed:
                    failures.append(f"{path}.{key}: not a field of the API")
                else:
                    unknown(item, parsed[key], f"{path}.{key}")
        elif isinstance(original, list):
            for i, item in enumerate(original):
                unknown(item, parsed[i] if isinstance(parsed, list) and i < len(parsed) else None, f"{path}[{i}]")

    unknown(obj, round_trip, model)
    return value


kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
config = {}
for generator in kustomization.get("configMapGenerator", []):
    for literal in generator.get("literals", []):
        key, value = literal.split("=", 1)
        config[key] = value
check({"ports", "nat-idle", "trace-max-size", "trace-keep"} <= set(config), "kustomization sets ports, NAT profile and trace limits")

daemonset = None
policy = None
for name in kustomization["resources"]:
    for doc in yaml.safe_load_all((HERE / name).read_text()):
        model = MODELS.get((doc["apiVersion"], doc["kind"]))
        check(model is not None, f"{name}: unexpected {doc['apiVersion']} {doc['kind']}")
        if model:
            value = strict(doc, model)
            if doc["kind"] == "DaemonSet":
                daemonset = value
            if doc["kind"] == "NetworkPolicy":
                policy = value

check(daemonset is not None, "a DaemonSet")
if daemonset:
    pod = daemonset.spec.template.spec
    check(pod.host_pid is True, "hostPID for process attribution")
    check(pod.automount_service_account_token is False, "no API token mounted")
    check(pod.termination_grace_period_seconds >= 15, "grace period to drain")
    check(any(t.operator == "Exists" for t in pod.tolerations or []), "tolerates every taint")
    annotations = daemonset.spec.template.metadata.annotations or {}
    check(annotations.get("prometheus.io/scrape") == "true", "scrape annotations")
    (container,) = pod.containers
    security = container.security_context
    check(security.privileged is False, "not privileged")
    seccomp = pod.security_context.seccomp_profile if pod.security_context else None
    check(seccomp is not None and seccomp.type == "RuntimeDefault", "seccomp RuntimeDefault")
    check(set(security.capabilities.add) == CAPABILITIES, f"capabilities {CAPABILITIES}")
    check(security.capabilities.drop == ["ALL"], "drops all other capabilities")
    check(container.resources.limits and container.resources.requests, "requests and limits")
    check(container.liveness_probe.http_get.path == "/healthz", "liveness on /healthz")
    check(container.readiness_probe.http_get.path == "/healthz", "readiness on /healthz")
    env = {e.name: e for e in container.env}
    check(env["NODE_NAME"].value_from.field_ref.field_path == "spec.nodeName", "NODE_NAME from the downward API")
    mounts = {m.mount_path: m for m in container.volume_mounts}
    for path in ["/sys/kernel/btf", "/sys/fs/cgroup", "/host/proc", "/host/var/log/pods"]:
        check(path in mounts and mounts[path].read_only, f"{path} mounted read-only")
    check("/var/lib/shuffletrace" in mounts, "trace directory mounted")
    args = container.args
    check(args[args.index("--host-root") + 1] == "/host", "--host-root /host")
    check(args[args.index("--trace-dir") + 1] == "/var/lib/shuffletrace", "traces on the hostPath")
    check("--metrics-addr" in args, "metrics served")
    for var in ["SHUFFLETRACE_PORTS", "SHUFFLETRACE_NAT_IDLE", "SHUFFLETRACE_TRACE_MAX_SIZE", "SHUFFLETRACE_TRACE_KEEP"]:
        check(f"$({var})" in args and var in env, f"{var} from the config map")

check(policy is not None, "a NetworkPolicy")
if policy and daemonset:
    labels = daemonset.spec.template.metadata.labels
    selector = policy.spec.pod_selector.match_labels or {}
    check(all(labels.get(k) == v for k, v in selector.items()) and selector, "the policy selects the DaemonSet's pods")
    check(set(policy.spec.policy_types) == {"Ingress", "Egress"}, "the policy covers ingress and egress")
    check(policy.spec.egress in (None, []), "no egress: shuffletrace needs no network")
    ports = [p.port for rule in policy.spec.ingress or [] for p in rule.ports or []]
    check(ports == [9464], "ingress only to the metrics port")
    check(all(rule._from for rule in policy.spec.ingress or []), "ingress only from named peers")



def check_dashboard():
    """The dashboard JSON and the ConfigMap the sidecar loads it from."""
    text = (GRAFANA / "shuffletrace.json").read_text()
    dashboard = json.loads(text)
    check(dashboard.get("schemaVersion", 0) >= 36, "dashboard schemaVersion >= 36 (Grafana 9+)")
    check(dashboard.get("uid") == "shuffletrace", "dashboard uid shuffletrace (stable links)")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables.get("datasource", {})
    check(source.get("type") == "datasource" and source.get("query") == "prometheus",
          "a Prometheus datasource variable named datasource")
    node = variables.get("node", {})
    definition = node.get("query", {}).get("query", "") if isinstance(node.get("query"), dict) else node.get("query", "")
    check(node.get("type") == "query" and definition.startswith("label_values(") and definition.endswith(", node)"),
          "a node variable from label_values(..., node)")
    check(node.get("includeAll") and node.get("allValue") == ".*",
          "node: All matches targets without a node label too")
    ids = [p["id"] for p in dashboard["panels"]]
    check(len(ids) == len(set(ids)), "dashboard panel ids unique")
    queries = [p for p in dashboard["panels"] if p["type"] != "row"]
    check(queries, "dashboard panels")
    for panel in queries:
        title = panel["title"]
        check(panel.get("datasource", {}).get("uid") == "${datasource}", f"{title}: datasource ${{datasource}}")
        check(panel.get("description"), f"{title}: a description")
        check(panel.get("targets"), f"{title}: targets")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            check(target.get("datasource", {}).get("uid") == "${datasource}", f"{title}: target datasource")
            check('job="shuffletrace"' in expr and 'node=~"$node"' in expr,
                  f"{title}: {expr} selects the shuffletrace job and $node")
    kustomization = yaml.safe_load((GRAFANA / "kustomization.yaml").read_text())
    check(not kustomization.get("resources"), "deploy/grafana makes the ConfigMap only")
    (generator,) = kustomization["configMapGenerator"]
    check(generator["files"] == ["shuffletrace.json"], "the ConfigMap holds shuffletrace.json")
    labels = generator["options"]["labels"]
    check(labels.get("grafana_dashboard") == "1", "labelled grafana_dashboard: \"1\" for the sidecar")
    # What kustomize generates from it, as the API would take it.
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"], "namespace": kustomization["namespace"], "labels": labels},
        "data": {"shuffletrace.json": text},
    }
    strict(config_map, "V1ConfigMap")
    # A ConfigMap holds at most 1 MiB; `kubectl apply` also keeps a copy in an annotation of at
    # most 256 KiB.
    check(len(text.encode()) < 256 * 1024, "dashboard under 256 KiB")
    base = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    check(not any("grafana" in r for r in base.get("resources", [])), "the dashboard stays opt-in")
    return len(queries)


panels = check_dashboard()

if failures:
    for failure in failures:
        print(f"manifest check: {failure}", file=sys.stderr)
    sys.exit(1)
print(f"manifest check: {len(kustomization['resources'])} manifests valid, DaemonSet policy ok, "
      f"dashboard of {panels} panels ok")
