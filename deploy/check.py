#!/usr/bin/env python3
"""What the deployment files promise each other, checked without a cluster or a Docker engine.

Run by deploy/check (needs PyYAML; tomllib is Python 3.11's). Reads deploy/kubernetes/ (one
instance) and deploy/kubernetes-cluster/ (three instances and etcd) as kustomize would (their
resources plus the generated ConfigMap), deploy/Dockerfile and each directory's msgtrace.toml,
and fails with one line per broken promise:

- one msgtrace StatefulSet: one replica without [cluster], two or more with it; one
  PersistentVolumeClaim (one per pod) mounted at the configuration's state_dir;
- with [cluster]: a prefix, no fixed name (each pod is its host name), every etcd endpoint a
  member (or the Service) of the kustomization's etcd StatefulSet on its client port;
- non-root (the image's USER is the pod's runAsUser), read-only root file system, no privilege
  escalation, every capability dropped;
- every ${VAR} of the configuration set in the container's env, secrets only from a Secret;
- the ConfigMap mounted where the container's `-c` argument looks;
- metrics scraped: the prometheus.io annotations, the Service and the ServiceMonitor all name the
  port that metrics_listen binds.
"""

import os
import re
import sys
import tomllib

import yaml

ROOT = os.path.dirname(os.path.abspath(__file__))
problems = []
# The directory being checked, named in every problem.
where = ["kubernetes"]


def problem(text):
    problems.append(f"{where[0]}: {text}")


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def main(K8S):
    kustomization = load_all(os.path.join(K8S, "kustomization.yaml"))[0]
    docs = []
    for resource in kustomization.get("resources", []):
        docs += load_all(os.path.join(K8S, resource))
    generated = {}
    for gen in kustomization.get("configMapGenerator", []):
        generated[gen["name"]] = [os.path.basename(f) for f in gen.get("files", [])]
    monitor = os.path.join(K8S, "servicemonitor.yaml")
    extra = load_all(monitor) if os.path.exists(monitor) else []

    with open(os.path.join(K8S, "msgtrace.toml"), "rb") as f:
        config = tomllib.load(f)
    variables = sorted(set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", " ".join(strings(config)))))

    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    sets = [d for d in by_kind.get("StatefulSet", []) if d["metadata"]["name"] == "msgtrace"]
    if len(sets) != 1:
        problem(f"{len(sets)} StatefulSets msgtrace in the kustomization, want 1")
        return
    sts = sets[0]
    spec = sts["spec"]
    cluster = config.get("cluster")
    if cluster is None and spec.get("replicas") != 1:
        problem(f"StatefulSet replicas = {spec.get('replicas')}, want 1 without [cluster] (each would collect every source)")
    if cluster is not None:
        if (spec.get("replicas") or 1) < 2:
            problem(f"StatefulSet replicas = {spec.get('replicas')} with [cluster], want at least 2")
        check_cluster(cluster, by_kind)
    claims = spec.get("volumeClaimTemplates", [])
    if len(claims) != 1:
        problem(f"{len(claims)} volumeClaimTemplates, want 1")
    pod = spec["template"]
    pod_spec = pod["spec"]
    containers = pod_spec["containers"]
    if len(containers) != 1:
        problem(f"{len(containers)} containers, want 1")
    c = containers[0]
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}

    # The state directory on the claim.
    state_dir = config.get("state_dir")
    if claims:
        m = mounts.get(claims[0]["metadata"]["name"])
        if m is None or m["mountPath"] != state_dir:
            problem(f"the PersistentVolumeClaim is not mounted at state_dir {state_dir!r}")

    # Non-root, read-only.
    psc = pod_spec.get("securityContext", {})
    csc = c.get("securityContext", {})
    if not psc.get("runAsNonRoot") or psc.get("runAsUser") in (None, 0):
        problem("the pod does not run as a non-root user (securityContext runAsNonRoot, runAsUser)")
    if not csc.get("readOnlyRootFilesystem"):
        problem("the container's root file system is not read-only")
    if csc.get("allowPrivilegeEscalation") is not False:
        problem("the container allows privilege escalation")
    if csc.get("capabilities", {}).get("drop") != ["ALL"]:
        problem("the container does not drop every capability")
    user = dockerfile_user()
    if user is not None and psc.get("runAsUser") != user:
        problem(f"the pod's runAsUser {psc.get('runAsUser')} is not the image's USER {user}")

    # The configuration's variables.
    env = {e["name"]: e for e in c.get("env", [])}
    for var in variables:
        if var not in env:
            problem(f"msgtrace.toml reads ${{{var}}}, which the container's env does not set")
    for name, e in env.items():
        secretish = re.search(r"SECRET|TOKEN|PASSWORD|KEY", name)
        if secretish and "secretKeyRef" not in e.get("valueFrom", {}):
            problem(f"env {name} looks like a secret but does not come from a Secret (secretKeyRef)")

    # The configuration file where `-c` looks.
    args = c.get("args", [])
    config_arg = args[args.index("-c") + 1] if "-c" in args else None
    mounted = False
    for v in pod_spec.get("volumes", []):
        cm = v.get("configMap")
        if cm and cm["name"] in generated and v["name"] in mounts:
            path = os.path.join(mounts[v["name"]]["mountPath"], "msgtrace.toml")
            mounted = mounted or (path == config_arg and "msgtrace.toml" in generated[cm["name"]])
    if not mounted:
        problem(f"-c {config_arg}: no generated ConfigMap with msgtrace.toml is mounted there")

    # Metrics: one port everywhere.
    listen = config.get("metrics_listen", "")
    port = int(listen.rsplit(":", 1)[1]) if ":" in listen else None
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if port is None or ports.get("metrics") != port:
        problem(f"container port `metrics` {ports.get('metrics')} is not metrics_listen's {port}")
    notes = pod["metadata"].get("annotations", {})
    if notes.get("prometheus.io/scrape") != "true" or notes.get("prometheus.io/port") != str(port):
        problem("the pod's prometheus.io/scrape and prometheus.io/port annotations do not name the metrics port")
    labels = pod["metadata"].get("labels", {})
    services = [s for s in by_kind.get("Service", []) if s["metadata"]["name"] == spec.get("serviceName")]
    if not services:
        problem(f"no Service {spec.get('serviceName')!r} (the StatefulSet's serviceName)")
    for s in services:
        if any(labels.get(k) != v for k, v in s["spec"]["selector"].items()):
            problem(f"Service {s['metadata']['name']} does not select the pod")
        if not any(p.get("targetPort") in ("metrics", port) for p in s["spec"]["ports"]):
            problem(f"Service {s['metadata']['name']} has no port for the metrics")
        if not s["spec"].get("publishNotReadyAddresses"):
            problem("the Service hides a not-ready pod (degraded /health) from Prometheus")
    for sm in (d for d in extra if d["kind"] == "ServiceMonitor"):
        selected = [s for s in services
                    if all(s["metadata"].get("labels", {}).get(k) == v
                           for k, v in sm["spec"]["selector"]["matchLabels"].items())]
        if not selected:
            problem("the ServiceMonitor selects no Service (the Service needs its labels)")
        for ep in sm["spec"]["endpoints"]:
            if not any(p["name"] == ep["port"] for s in selected for p in s["spec"]["ports"]):
                problem(f"the ServiceMonitor's port {ep['port']!r} is not a port of the Service")

    # The probes use the metrics listener.
    for probe in ("readinessProbe", "livenessProbe"):
        p = c.get(probe, {})
        target = (p.get("httpGet") or p.get("tcpSocket") or {}).get("port")
        if target not in ("metrics", port):
            problem(f"{probe} does not use the metrics port")


def check_cluster(cluster, by_kind):
    """[cluster]: its keys, and its etcd endpoints served by the kustomization's etcd."""
    if not cluster.get("prefix"):
        problem("[cluster] has no prefix")
    if "name" in cluster:
        problem("[cluster] sets a name: every replica would register under it (leave it out: the host name, the pod's name)")
    etcd_sets = [d for d in by_kind.get("StatefulSet", []) if d["metadata"]["name"] != "msgtrace"]
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    endpoints = cluster.get("etcd", [])
    if not endpoints:
        problem("[cluster] has no etcd endpoints")
    for e in endpoints:
        m = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)", e)
        if not m:
            problem(f"[cluster] etcd endpoint {e!r} is not http://HOST:PORT")
            continue
        host, port = m.group(1), int(m.group(2))
        labels = host.split(".")
        service = services.get(labels[-1])
        if service is None:
            problem(f"etcd endpoint {e!r}: no Service {labels[-1]!r} in the kustomization")
            continue
        if not any(p["port"] == port for p in service["spec"]["ports"]):
            problem(f"etcd endpoint {e!r}: Service {labels[-1]!r} has no port {port}")
        owners = [s for s in etcd_sets if s["spec"].get("serviceName") == labels[-1]]
        if not owners:
            problem(f"etcd endpoint {e!r}: no StatefulSet behind Service {labels[-1]!r}")
        for s in owners:
            pods = {f"{s['metadata']['name']}-{i}" for i in range(s["spec"].get("replicas") or 1)}
            if len(labels) == 2 and labels[0] not in pods:
                problem(f"etcd endpoint {e!r}: {labels[0]!r} is not a pod of StatefulSet {s['metadata']['name']}")


def strings(value):
    """Every string value of a parsed TOML document (where msgtrace expands ${VAR})."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)


def dockerfile_user():
    """The numeric USER of the Dockerfile's last stage (None if it names no number)."""
    stages = []
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        for line in f:
            words = line.split()
            if words and words[0].upper() == "FROM":
                stages.append(None)
            elif words and words[0].upper() == "USER" and stages:
                stages[-1] = words[1].split(":")[0]
    if len(stages) < 2:
        problem("the Dockerfile is not multi-stage (a build stage, then a small runtime stage)")
    last = stages[-1] if stages else None
    if last is None or last in ("0", "root"):
        problem("the Dockerfile's runtime stage does not set a non-root USER")
        return None
    return int(last) if last.isdigit() else None


if __name__ == "__main__":
    for directory in ("kubernetes", "kubernetes-cluster"):
        where[0] = directory
        main(os.path.join(ROOT, directory))
    for p in problems:
        print(f"deploy: {p}")
    sys.exit(1 if problems else 0)
