#!/usr/bin/env python3
"""Checks that the dashboard and the alert rules use only metrics a member exports.

Give it a scrape of a member's /metrics (Prometheus text format) and the dashboard JSON, the
alert rules, or both. It collects every name matching choria_provisioner_[a-z0-9_]+:

- in the dashboard, from PromQL only: the "expr", "query" and "definition" strings (panel
  targets, annotations, template variables);
- in the alert rules, anywhere in the file (a regex scan; no YAML parser is needed).

A name passes when the scrape has it as a sample or in a # HELP or # TYPE line. A name ending
in _bucket, _sum or _count passes when the scrape declares its base as a histogram (or, for
_sum and _count, a summary). A histogram's bare name fails: PromQL finds no series under it.

The exporter leaves out a labelled metric until its first sample (for example
choria_provisioner_bad_messages before any bad message). With --source node/src/metrics.rs,
names defined there but absent from the scrape are listed as warnings instead of failures.

Exit status: 0 when every name passes, 1 when some do not (they are listed on stderr), 2 on a
usage error or an unreadable file.
"""

import argparse
import json
import re
import sys

NAME = re.compile(r"(?<![A-Za-z0-9_:])choria_provisioner_[a-z0-9_]+")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)")
PROMQL_KEYS = ("expr", "query", "definition")
SUFFIXES = {
    "_bucket": ("histogram",),
    "_sum": ("histogram", "summary"),
    "_count": ("histogram", "summary"),
}
# In metrics.rs: counter("name", ...), gauge("name", ...), histogram("name", ...), and
# IntGaugeVec::new(Opts::new("name", ...)) / IntCounterVec::new(...) / HistogramVec::new(...)
SOURCE_DEF = re.compile(
    r'\b(counter|gauge|histogram)\(\s*"(choria_provisioner_[a-z0-9_]+)"'
    r'|\b(IntGaugeVec|IntCounterVec|HistogramVec)::new\(\s*(?:HistogramOpts|Opts)::new\(\s*'
    r'"(choria_provisioner_[a-z0-9_]+)"'
)
SOURCE_KIND = {"IntGaugeVec": "gauge", "IntCounterVec": "counter", "HistogramVec": "histogram"}


def die(message):
    print(f"check-metrics: {message}", file=sys.stderr)
    sys.exit(2)


def read(path):
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        die(f"cannot read {path}: {e.strerror}")


def parse_scrape(text):
    """Names with samples, and the type of every name in a # TYPE line (HELP-only: None)."""
    samples, types = set(), {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                if parts[1] == "TYPE" and len(parts) == 4:
                    types[name] = parts[3].strip()
                else:
                    types.setdefault(name, None)
            continue
        m = SAMPLE.match(line)
        if m:
            samples.add(m.group(1))
    return samples, types


def parse_source(text):
    """Metric names and kinds defined in metrics.rs."""
    defined = {}
    for m in SOURCE_DEF.finditer(text):
        if m.group(2):
            defined[m.group(2)] = m.group(1)
        else:
            defined[m.group(4)] = SOURCE_KIND[m.group(3)]
    return defined


def dashboard_refs(text, path):
    """(name, where) for every metric name in the dashboard's PromQL strings."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        die(f"{path} is not JSON: {e}")
    refs = []

    def walk(node, where):
        if isinstance(node, dict):
            title = node.get("title") or node.get("name")
            if isinstance(title, str) and title:
                where = title
            for key, value in node.items():
                if key in PROMQL_KEYS and isinstance(value, str):
                    refs.extend((n, f"{path}: {where}") for n in NAME.findall(value))
                else:
                    walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(doc, "top level")
    return refs


def alert_refs(text, path):
    refs = []
    for number, line in enumerate(text.splitlines(), 1):
        refs.extend((n, f"{path}:{number}") for n in NAME.findall(line))
    return refs


def base_of(name, kinds, allowed_kinds_for):
    """The histogram/summary a suffixed name belongs to, if `kinds` says it is one."""
    for suffix, allowed in SUFFIXES.items():
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if allowed_kinds_for(base) in allowed:
                return base
    return None


def check(name, samples, types, defined):
    """None when the name passes; otherwise ('error' | 'warning', reason)."""
    if types.get(name) in ("histogram", "summary"):
        return ("error", f"is a {types[name]}: use {name}_bucket, _sum or _count")
    if name in samples or name in types:
        return None
    if base_of(name, types, types.get):
        return None
    if name in defined:
        if defined[name] == "histogram":
            return ("error", "is a histogram: use _bucket, _sum or _count")
        return ("warning", f"defined in the source ({defined[name]}) but not in the scrape yet")
    base = base_of(name, defined, defined.get)
    if base:
        return ("warning", f"histogram {base} is defined in the source but not in the scrape yet")
    return ("error", "not in the scrape")


def main():
    p = argparse.ArgumentParser(
        description="Fail when the dashboard or alert rules use a metric the scrape lacks."
    )
    p.add_argument("--metrics", required=True, help="a /metrics scrape (text format); - for stdin")
    p.add_argument("--dashboard", help="Grafana dashboard JSON")
    p.add_argument("--alerts", help="Prometheus alert rules (YAML, scanned as text)")
    p.add_argument(
        "--source",
        help="node/src/metrics.rs: metrics defined there but not yet in the scrape only warn",
    )
    args = p.parse_args()
    if not args.dashboard and not args.alerts:
        p.error("give --dashboard, --alerts or both")

    samples, types = parse_scrape(read(args.metrics))
    if not samples and not types:
        die(f"{args.metrics} holds no metrics")
    defined = parse_source(read(args.source)) if args.source else {}
    if args.source and not defined:
        die(f"no metric definitions found in {args.source}")

    refs = []
    if args.dashboard:
        refs += dashboard_refs(read(args.dashboard), args.dashboard)
    if args.alerts:
        refs += alert_refs(read(args.alerts), args.alerts)
    if not refs:
        die("no choria_provisioner_ metric referenced; wrong file?")

    problems = {}
    for name, where in refs:
        verdict = check(name, samples, types, defined)
        if verdict:
            entry = problems.setdefault(name, (verdict, []))
            if where not in entry[1]:
                entry[1].append(where)

    names = sorted({n for n, _ in refs})
    errors = sorted(n for n, (v, _) in problems.items() if v[0] == "error")
    warnings = sorted(n for n, (v, _) in problems.items() if v[0] == "warning")
    for label, group in (("warning", warnings), ("missing", errors)):
        for name in group:
            (_, reason), places = problems[name]
            print(f"{label}: {name} {reason}", file=sys.stderr)
            for where in places:
                print(f"    used in {where}", file=sys.stderr)
    print(
        f"{len(names)} metric names referenced, {len(errors)} missing, {len(warnings)} warnings"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
