"""Why: the alert rules exist twice, as a plain Prometheus rules file and as a PrometheusRule
for the Prometheus Operator; this keeps them one. `--write` generates the PrometheusRule from
deploy/prometheus/shuffletrace.rules.yml; without it, checks (run by `cargo xtask test`) that
the checked-in PrometheusRule is what would be generated and stays out of the base
kustomization, that every alert has the annotations an on-call person needs with a
runbook_url whose README anchor exists, and that deploy/prometheus/tests.yml proves every
alert both firing and quiet."""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "deploy/prometheus/shuffletrace.rules.yml"
TESTS = ROOT / "deploy/prometheus/tests.yml"
README = ROOT / "README.md"
GENERATED = ROOT / "deploy/kubernetes/components/prometheus-rule/prometheusrule.yaml"
HEADER = """\
# Generated from deploy/prometheus/shuffletrace.rules.yml by deploy/prometheus/rules.py --write:
# do not edit (`cargo xtask test` fails when the two differ).
"""


def text(dumper, value):
    """Multi-line strings (the expressions) as YAML blocks, as in the rules file."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


yaml.add_representer(str, text, Dumper=yaml.SafeDumper)


def generate():
    rules = yaml.safe_load(RULES.read_text())
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "shuffletrace",
            # The overlay's namespace is not the base's: set here, next to the DaemonSet.
            "namespace": "shuffletrace",
            "labels": {"app.kubernetes.io/name": "shuffletrace", "role": "alert-rules"},
        },
        "spec": rules,
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=100, allow_unicode=True)


def anchors(markdown):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    found = set()
    for line in markdown.splitlines():
        match = re.match(r"#+\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def check():
    failures = []
    if not GENERATED.exists() or GENERATED.read_text() != generate():
        failures.append(f"{GENERATED.relative_to(ROOT)} differs from the rules file: run "
                        "python3 deploy/prometheus/rules.py --write")
    base = yaml.safe_load((ROOT / "deploy/kubernetes/kustomization.yaml").read_text())
    if base.get("components") or any("prometheus" in r for r in base.get("resources", [])):
        failures.append("the base kustomization must apply without the Operator's CRDs: the "
                        "PrometheusRule comes in deploy/prometheus/kustomization.yaml only")
    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    readme = anchors(README.read_text())
    for alert in alerts:
        name = alert["alert"]
        notes = alert.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not notes.get(key):
                failures.append(f"{name}: no {key}")
        anchor = notes.get("runbook_url", "").partition("#")[2]
        if anchor not in readme:
            failures.append(f"{name}: runbook_url anchor #{anchor} is not a README heading")
        if "severity" not in alert.get("labels", {}):
            failures.append(f"{name}: no severity label")
    fired, quiet = set(), set()
    for group in yaml.safe_load(TESTS.read_text())["tests"]:
        for case in group.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    for alert in alerts:
        name = alert["alert"]
        if name not in fired:
            failures.append(f"{name}: no test in tests.yml where it fires")
        if name not in quiet:
            failures.append(f"{name}: no test in tests.yml where it stays quiet")
    for failure in failures:
        print(f"rules: {failure}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"rules: {len(alerts)} alerts, PrometheusRule in sync, each tested firing and quiet")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        GENERATED.write_text(generate())
    else:
        check()
