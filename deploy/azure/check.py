#!/usr/bin/env python3
"""What deploy/azure/message-trace.json promises, checked without Azure (deploy/check runs it).

The template parses as JSON and is an ARM deployment template; the rule's transform produces
exactly the table's columns (TimeGenerated among them) from columns its stream declares; the rule
writes to that table; the role assigned is Monitoring Metrics Publisher, on the rule; and the
stream is the one examples/graph-to-sentinel.toml names. One line per broken promise.
(tests/sentinel.rs checks the other side: every field msgtrace sends is a declared column.)
"""

import json
import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MONITORING_METRICS_PUBLISHER = "3913510d-42f4-4e42-8a64-420c390055eb"
problems = []


def main():
    with open(os.path.join(ROOT, "deploy/azure/message-trace.json")) as f:
        t = json.load(f)
    if "deploymentTemplate.json" not in t.get("$schema", ""):
        problems.append("not an ARM deployment template ($schema)")
    by_type = {}
    for r in t["resources"]:
        by_type.setdefault(r["type"], []).append(r)
    table = by_type["Microsoft.OperationalInsights/workspaces/tables"][0]
    schema = table["properties"]["schema"]
    table_name = t["variables"]["tableName"]
    columns = {c["name"]: c["type"] for c in schema["columns"]}
    if columns.get("TimeGenerated") != "datetime":
        problems.append("the table has no TimeGenerated datetime column")
    if not table_name.endswith("_CL"):
        problems.append(f"custom table {table_name} does not end in _CL")
    for name in columns:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            problems.append(f"table column {name!r} must start with a letter")

    dcr = by_type["Microsoft.Insights/dataCollectionRules"][0]["properties"]
    streams = dcr["streamDeclarations"]
    stream = t["variables"]["streamName"]
    if list(streams) != [stream]:
        problems.append(f"the rule declares {list(streams)}, want [{stream!r}]")
    declared = {c["name"] for c in streams.get(stream, {}).get("columns", [])}
    flow = dcr["dataFlows"][0]
    if flow["streams"] != [stream] or flow["outputStream"] != f"Custom-{table_name}":
        problems.append("the data flow does not take the stream to the table")
    kql = flow["transformKql"]
    m = re.fullmatch(r"source \| project (.*)", kql)
    if not m:
        problems.append("transformKql is not `source | project ...`")
        return
    produced = {}
    for part in m.group(1).split(", "):
        out, expr = part.split(" = ", 1)
        arg = re.fullmatch(r"to\w+\((?:\['(.+)'\]|(\w+))\)", expr)
        if not arg:
            problems.append(f"transform: cannot read {part!r}")
            continue
        produced[out] = arg.group(1) or arg.group(2)
    if set(produced) != set(columns):
        problems.append(f"the transform makes {sorted(produced)}, the table has {sorted(columns)}")
    for out, src in produced.items():
        if src not in declared:
            problems.append(f"the transform reads {src!r}, which the stream does not declare")

    role = by_type["Microsoft.Authorization/roleAssignments"][0]
    if MONITORING_METRICS_PUBLISHER not in t["variables"]["monitoringMetricsPublisher"]:
        problems.append("the role assigned is not Monitoring Metrics Publisher")
    if "dataCollectionRules" not in role.get("scope", ""):
        problems.append("the role is not assigned on the data collection rule")

    with open(os.path.join(ROOT, "examples/graph-to-sentinel.toml"), "rb") as f:
        example = tomllib.load(f)
    if example["sinks"]["sentinel"]["stream"] != stream:
        problems.append("examples/graph-to-sentinel.toml names another stream")


main()
for p in problems:
    print(p)
sys.exit(1 if problems else 0)
