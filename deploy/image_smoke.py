#!/usr/bin/env python3
"""Build deploy/Dockerfile and check that the image serves; run by deploy/image-smoke.sh.

Steps, each printed as it runs:
1. the engine: docker with a running daemon, else podman;
2. the base images named by the Dockerfile's FROM lines: present, pulled, or (where no registry
   answers) stand-ins made from what this machine reaches, announced loudly;
3. the build, timed, with the Dockerfile unchanged;
4. the check, on the compose stack's terms (deploy/compose.yaml's gateway service: its
   volumes, environment, read-only root, tmpfs, health check, stop grace): in a container where
   containers run, else from the image's exported root file system under chroot as the
   image's user. The gateway must start on the image's config, answer a TLS inference with its
   dev key, report /health/ready 200, pass the image's HEALTHCHECK command, and stop on
   SIGTERM with exit status 0 within the grace period.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import queue
import signal
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
WORK = ROOT / "target" / "image-smoke"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The machine's CA bundle: registries may be reached through its own certificate authority.
HOST_CA = Path(os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"))


class Failed(Exception):
    pass


def say(msg: str) -> None:
    print(f"[image-smoke] {msg}", flush=True)


def loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n[image-smoke] {msg}\n{bar}\n", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    say("$ " + " ".join(cmd))
    r = subprocess.run(cmd, **kw)
    if r.returncode != 0:
        raise Failed(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} exited with {r.returncode}")
    return r


def quiet(cmd: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"timed out after {timeout} s")


# --- 1. engine ---------------------------------------------------------------------------------


def pick_engine() -> str:
    if shutil.which("docker") and quiet(["docker", "info"], 30).returncode == 0:
        return "docker"
    if shutil.which("podman"):
        return "podman"
    raise Failed("neither docker (with a running daemon) nor podman is installed")


# --- 2. base images ----------------------------------------------------------------------------


def base_images(dockerfile: Path) -> list[str]:
    """The images the FROM lines name, stage names excluded, in order."""
    stages, bases = set(), []
    for line in dockerfile.read_text().splitlines():
        m = re.match(r"\s*FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if not m:
            continue
        if m.group(1) not in stages and m.group(1) not in bases:
            bases.append(m.group(1))
        if m.group(2):
            stages.add(m.group(2))
    return bases


def qualified(image: str) -> str:
    """`python:3.11` → `docker.io/library/python:3.11`, as Docker Hub's short names resolve."""
    first = image.split("/")[0]
    if "/" not in image:
        return f"docker.io/library/{image}"
    if "." not in first and ":" not in first and first != "localhost":
        return f"docker.io/{image}"
    return image


def have(engine: str, image: str) -> bool:
    return quiet([engine, "image", "inspect", image]).returncode == 0


def tag_both(engine: str, source: str, image: str) -> None:
    """Tag under the short name and the qualified one, so FROM finds it either way."""
    for name in {image, qualified(image)}:
        if name != source:
            run([engine, "tag", source, name], stdout=subprocess.DEVNULL)


def ensure_bases(engine: str, bases: list[str]) -> list[str]:
    """Every base present; returns the names that had to be made as stand-ins."""
    made = []
    for image in bases:
        if have(engine, image) and not stand_in(engine, image):
            say(f"{image}: present")
            continue
        if have(engine, image):
            say(f"{image}: only a stand-in of this script's is here; trying to pull the real one first")
        say(f"{image}: pulling {qualified(image)}")
        r = quiet([engine, "pull", qualified(image)], timeout=120)
        if r.returncode == 0:
            tag_both(engine, qualified(image), image)
            continue
        why = (r.stderr.strip().splitlines() or ["no output"])[-1]
        say(f"{image}: cannot pull ({why[:160]})")
        if have(engine, image):
            loud(f"STAND-IN: {image} could not be pulled; using the stand-in an earlier run made under that name")
            made.append(image)
            continue
        make_stand_in(engine, image)
        made.append(image)
    return made


STAND_IN_LABEL = "org.ml-gateway.image-smoke.stand-in"


def stand_in(engine: str, image: str) -> bool:
    r = quiet([engine, "image", "inspect", "--format", "{{json .Config.Labels}}", image])
    return r.returncode == 0 and STAND_IN_LABEL in r.stdout


def remove_stand_ins(engine: str) -> None:
    r = quiet([engine, "images", "--filter", f"label={STAND_IN_LABEL}", "--format", "{{.ID}}"])
    for image_id in sorted(set(r.stdout.split())):
        quiet([engine, "rmi", "--force", image_id])
    shutil.rmtree(WORK / "debian-rootfs", ignore_errors=True)
    say("removed the stand-ins made before")


def make_stand_in(engine: str, image: str) -> None:
    name, _, tag = image.partition(":")
    if name == "debian" and tag.startswith("bookworm"):
        return debian_root(engine, image)  # announces itself
    if name == "python" and tag.endswith("bookworm"):
        derived(engine, image, python_stand_in(tag))
    elif name == "rust" and tag.endswith("bookworm"):
        derived(engine, image, rust_stand_in(tag))
    else:
        raise Failed(f"{image} cannot be pulled and there is no stand-in recipe for it")
    loud(
        f"STAND-IN: {image} could not be pulled; built a stand-in under that name "
        "(see above for what it holds). The Dockerfile is unchanged."
    )


def debian_root(engine: str, image: str) -> None:
    """Debian bookworm from its archive (debootstrap), imported as an image."""
    rootfs = WORK / "debian-rootfs"
    if not (rootfs / "etc" / "debian_version").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.mkdir(parents=True)
        started = time.monotonic()
        run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR], stdout=subprocess.DEVNULL)
        say(f"debootstrap: {time.monotonic() - started:.0f} s")
    # Like the official slim image (debuerreotype): apt keeps no caches, and dpkg installs
    # no documentation, manuals or translations.
    conf = rootfs / "etc/apt/apt.conf.d"
    clean = '"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true";'
    (conf / "docker-clean").write_text(
        f"DPkg::Post-Invoke {{ {clean} }};\nAPT::Update::Post-Invoke {{ {clean} }};\n"
        'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n'
    )
    (conf / "docker-no-languages").write_text('Acquire::Languages "none";\n')
    (conf / "docker-gzip-indexes").write_text('Acquire::GzipIndexes "true";\n')
    (conf / "docker-autoremove-suggests").write_text('Apt::AutoRemove::SuggestsImportant "false";\n')
    excluded = ["/usr/share/doc/*", "/usr/share/man/*", "/usr/share/groff/*", "/usr/share/info/*",
                "/usr/share/lintian/*", "/usr/share/linda/*", "/usr/share/locale/*"]
    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(
        "".join(f"path-exclude {p}\n" for p in excluded) + "path-include /usr/share/doc/*/copyright\n"
    )
    for p in excluded:
        for f in rootfs.glob(p.lstrip("/")):
            if f.is_dir() and not f.is_symlink():
                for g in f.rglob("*"):
                    if g.is_file() and not (p == "/usr/share/doc/*" and g.name == "copyright"):
                        g.unlink()
            elif f.is_file():
                f.unlink()
    shutil.rmtree(rootfs / "var/cache/apt", ignore_errors=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    run(
        [engine, "import", "--change", f"ENV PATH={DEFAULT_PATH}", "--change", 'CMD ["bash"]',
         "--change", f"LABEL {STAND_IN_LABEL}=debootstrap", "-", "ml-gateway-stand-in/debian:bookworm"],
        stdin=tar.stdout, stdout=subprocess.DEVNULL,
    )
    if tar.wait() != 0:
        raise Failed("tar of the debootstrap root failed")
    tag_both(engine, "ml-gateway-stand-in/debian:bookworm", image)
    loud(
        f"STAND-IN: {image} is a Debian bookworm root file system made here by debootstrap "
        f"from {DEBIAN_MIRROR}, not the image from the registry"
    )


def ensure_debian(engine: str) -> None:
    if not have(engine, "ml-gateway-stand-in/debian:bookworm"):
        debian_root(engine, "debian:bookworm-slim")


def python_stand_in(tag: str) -> tuple[str, dict[str, Path]]:
    version = tag.split("-")[0]
    if version != "3.11":
        raise Failed(f"python:{tag}: Debian bookworm's Python is 3.11, not {version}")
    containerfile = f"""FROM ml-gateway-stand-in/debian:bookworm
RUN apt-get update \\
    && apt-get install -y --no-install-recommends python3 python3-pip python-is-python3 ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
COPY host-ca.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL {STAND_IN_LABEL}="python3 from Debian bookworm"
"""
    return containerfile, {"host-ca.crt": HOST_CA}


def rust_stand_in(tag: str) -> tuple[str, dict[str, Path]]:
    wanted = tag.split("-")[0]
    sysroot = Path(subprocess.run(["rustc", "--print", "sysroot"], capture_output=True, text=True, check=True).stdout.strip())
    have_version = subprocess.run(["rustc", "--version"], capture_output=True, text=True, check=True).stdout.split()[1]
    if not (have_version == wanted or have_version.startswith(wanted + ".")):
        loud(f"rust:{tag} asked for, this machine's toolchain is {have_version}: the stand-in carries {have_version}")
    # The toolchain without its documentation (share/), which the build does not read.
    toolchain = WORK / "toolchain"
    shutil.rmtree(toolchain, ignore_errors=True)
    toolchain.mkdir(parents=True)
    for part in ("bin", "lib", "libexec", "etc"):
        if (sysroot / part).exists():
            shutil.copytree(sysroot / part, toolchain / part, symlinks=True)
    containerfile = f"""FROM ml-gateway-stand-in/debian:bookworm
RUN apt-get update \\
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev make pkg-config git ca-certificates \\
    && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
COPY host-ca.crt /etc/ssl/certs/ca-certificates.crt
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/rust/bin:{DEFAULT_PATH} \\
    RUST_VERSION={have_version} SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \\
    CARGO_HTTP_CAINFO=/etc/ssl/certs/ca-certificates.crt
LABEL {STAND_IN_LABEL}="rustc {have_version} copied from this machine"
"""
    return containerfile, {"host-ca.crt": HOST_CA, "toolchain": toolchain}


def derived(engine: str, image: str, recipe: tuple[str, dict[str, Path]]) -> None:
    ensure_debian(engine)
    containerfile, files = recipe
    context = WORK / ("context-" + re.sub(r"[^a-z0-9.-]", "-", image))
    shutil.rmtree(context, ignore_errors=True)
    context.mkdir(parents=True)
    for name, src in files.items():
        if src.is_dir():
            os.rename(src, context / name)
        else:
            shutil.copy(src, context / name)
    (context / "Containerfile").write_text(containerfile)
    say(f"stand-in {image}:\n" + containerfile)
    run(build_command(engine, context / "Containerfile", image, context, local_only=True))
    shutil.rmtree(context, ignore_errors=True)
    tag_both(engine, image, image)


def build_command(engine: str, file: Path, tag: str, context: Path, local_only: bool) -> list[str]:
    if engine == "podman":
        # chroot isolation: the only one that works where containers cannot run; docker
        # format: OCI images drop HEALTHCHECK; host network: the archive and registries.
        cmd = ["podman", "build", "--isolation", "chroot", "--network", "host", "--format", "docker"]
        if local_only:
            cmd += ["--pull=never"]
    else:
        cmd = ["docker", "build"]
    return cmd + ["-f", str(file), "-t", tag, str(context)]


# --- 4. the check ------------------------------------------------------------------------------


def inspect(engine: str, image: str) -> dict:
    r = quiet([engine, "image", "inspect", image])
    if r.returncode != 0:
        raise Failed(f"no image {image}: {r.stderr.strip()}")
    return json.loads(r.stdout)[0]


def compose_gateway() -> dict:
    spec = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return spec["services"]["gateway"]


def seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", str(v))
    if not m:
        raise Failed(f"compose.yaml: cannot read the duration {v!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def environment(config: dict, service: dict, token: str) -> dict[str, str]:
    env = dict(e.split("=", 1) for e in config.get("Env") or [])
    env.setdefault("PATH", DEFAULT_PATH)
    for k, v in (service.get("environment") or {}).items():
        v = str(v)
        env[k] = token if v.startswith("${GATEWAY_ADMIN_TOKEN") else v
    return env


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


class Chrooted:
    """The image's entrypoint from its exported root file system, as the image's user, with the
    compose service's volumes, a read-only root and a tmpfs /tmp, in a private mount
    namespace on the host's network."""

    def __init__(self, engine: str, image: str, config: dict, service: dict, env: dict[str, str]):
        self.dir = Path(tempfile.mkdtemp(prefix="image-smoke-", dir=WORK))
        self.rootfs = self.dir / "rootfs"
        self.rootfs.mkdir()
        cid = quiet([engine, "create", image]).stdout.strip()
        if not cid:
            raise Failed(f"{engine} create {image} failed")
        try:
            export = subprocess.Popen([engine, "export", cid], stdout=subprocess.PIPE)
            run(["tar", "-C", str(self.rootfs), "-x", "--same-owner"], stdin=export.stdout)
            if export.wait() != 0:
                raise Failed(f"{engine} export failed")
        finally:
            quiet([engine, "rm", cid])
        self.user = config.get("User") or "0:0"
        if ":" not in self.user:
            self.user += f":{self.user}"
        self.workdir = config.get("WorkingDir") or "/"
        self.env = env
        mounts = []
        for v in service.get("volumes") or []:
            source, target, *mode = v.split(":")
            if source.startswith((".", "/")):
                host = (DEPLOY / source).resolve()
            else:
                # A named volume starts as a copy of what the image has at that path (owner included).
                host = self.dir / "volumes" / source
                host.parent.mkdir(exist_ok=True)
                if (self.rootfs / target.lstrip("/")).exists():
                    run(["cp", "-a", str(self.rootfs / target.lstrip("/")), str(host)])
                else:
                    host.mkdir()
            mounts.append((host, target, "ro" in mode))
        self.volumes = {target: host for host, target, _ in mounts}
        lines = ["set -eu", f"R={self.rootfs}", 'mount --bind "$R" "$R"']
        for host, target, ro in mounts:
            lines.append(f'mount --bind {host} "$R{target}"')
            if ro:
                lines.append(f'mount -o remount,bind,ro "$R{target}"')
        if service.get("read_only"):
            lines.append('mount -o remount,bind,ro "$R"')
        for t in service.get("tmpfs") or []:
            lines.append(f'mount -t tmpfs -o mode=1777 tmpfs "$R{t}"')
        lines += ['mount --rbind /dev "$R/dev"', 'mount -t proc proc "$R/proc"']
        for f in ("/etc/resolv.conf", "/etc/hosts"):
            if (self.rootfs / f.lstrip("/")).is_file():
                lines.append(f'mount --bind -o ro {f} "$R{f}"')
        args = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
        envs = " ".join(_q(f"{k}={v}") for k, v in self.env.items())
        lines.append(
            f'exec chroot --userspec={self.user} "$R" /usr/bin/env -i -C {_q(self.workdir)} {envs} '
            + " ".join(_q(a) for a in args)
        )
        (self.dir / "start.sh").write_text("\n".join(lines) + "\n")
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        say(f"running {' '.join(self.args)} as {self.user} in {self.workdir}, root read-only, from {self.rootfs}")
        self.log = open(self.dir / "stderr.log", "w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "bash", str(self.dir / "start.sh")],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.lines = lines_of(self.proc.stdout)

    def exec(self, argv: list[str], timeout: float, user: str | None = None) -> subprocess.CompletedProcess:
        """A command inside the running one's mounts and root, as its user (`HEALTHCHECK`)."""
        uid, gid = (user or self.user).split(":")
        envs = [f"{k}={v}" for k, v in self.env.items()]
        cmd = ["nsenter", "-t", str(self.proc.pid), "-m", "-r", "-w", "-S", uid, "-G", gid,
               "/usr/bin/env", "-i", *envs, *argv]
        say("$ " + " ".join(cmd[:12]) + " … " + " ".join(argv))
        return quiet(cmd, timeout)

    def out(self) -> queue.Queue:
        return self.lines

    def file(self, path: str) -> Path:
        """A file the gateway wrote under a volume, read from the host."""
        for target, host in self.volumes.items():
            if path.startswith(target + "/"):
                return host / path[len(target) + 1 :]
        raise Failed(f"{path} is on no volume")

    def signal(self, name: str) -> None:
        os.kill(self.proc.pid, getattr(signal, name))

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stderr(self) -> str:
        return last_log(self.dir / "stderr.log")

    def cleanup(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # The mounts were private to the process's namespace and went with it.
        shutil.rmtree(self.dir, ignore_errors=True)


class Container:
    """The same, where containers run: `run` with the compose service's options."""

    def __init__(self, engine: str, image: str, config: dict, service: dict, env: dict[str, str]):
        self.engine, self.name = engine, f"image-smoke-{os.getpid()}"
        self.dir = Path(tempfile.mkdtemp(prefix="image-smoke-", dir=WORK))
        self.env = env
        cmd = [engine, "run", "-d", "--name", self.name]
        for k, v in (service.get("environment") or {}).items():
            cmd += ["-e", f"{k}={env[k]}"]
        for v in service.get("volumes") or []:
            source, rest = v.split(":", 1)
            if source.startswith((".", "/")):
                source = str((DEPLOY / source).resolve())
            else:
                source = f"{self.name}-{source}"
            cmd += ["-v", f"{source}:{rest}"]
        if service.get("read_only"):
            cmd.append("--read-only")
        for t in service.get("tmpfs") or []:
            cmd += ["--tmpfs", t]
        for p in service.get("ports") or []:
            cmd += ["-p", str(p)]
        for o in service.get("security_opt") or []:
            cmd += ["--security-opt", o]
        for c in service.get("cap_drop") or []:
            cmd += ["--cap-drop", c]
        self.run_cmd = cmd + [image]
        self.proc = None

    def start(self) -> None:
        run(self.run_cmd, stdout=subprocess.DEVNULL)
        self.proc = subprocess.Popen([self.engine, "logs", "-f", self.name], stdout=subprocess.PIPE,
                                     stderr=open(self.dir / "stderr.log", "w"), text=True)
        self.lines = lines_of(self.proc.stdout)

    def out(self) -> queue.Queue:
        return self.lines

    def file(self, path: str) -> Path:
        local = self.dir / Path(path).name
        run([self.engine, "cp", f"{self.name}:{path}", str(local)])
        return local

    def exec(self, argv: list[str], timeout: float, user: str | None = None) -> subprocess.CompletedProcess:
        return quiet([self.engine, "exec", *(["-u", user] if user else []), self.name, *argv], timeout)

    def signal(self, name: str) -> None:
        run([self.engine, "kill", "--signal", name, self.name], stdout=subprocess.DEVNULL)

    def wait(self, timeout: float) -> int:
        r = quiet([self.engine, "wait", self.name], timeout)
        if r.returncode != 0:
            raise subprocess.TimeoutExpired("wait", timeout)
        return int(r.stdout.split()[0])

    def stderr(self) -> str:
        return last_log(self.dir / "stderr.log")

    def cleanup(self) -> None:
        quiet([self.engine, "rm", "-f", "-v", self.name])
        if self.proc:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def last_log(path: Path) -> str:
    """The end of the gateway's stderr; a check that failed before it started left none (and
    must not be hidden by this reading it)."""
    try:
        return path.read_text(errors="replace")[-4000:]
    except FileNotFoundError:
        return "(none: the gateway was not started)"


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def lines_of(stream) -> queue.Queue:
    """The stream's lines, read on a thread (None at its end)."""
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put(line.rstrip("\n"))
        q.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return q


def read_until(lines: queue.Queue, pattern: str, within: float) -> list[str]:
    """Lines until one starts with `pattern`; fails at the stream's end or when time is up."""
    seen, deadline = [], time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            raise Failed(f"the output ended before a line starting {pattern!r}: {seen[-5:]}")
        seen.append(line)
        print(f"    | {line}", flush=True)
        if line.startswith(pattern):
            return seen
    raise Failed(f"no line starting {pattern!r} within {within:.0f} s")


def check(runner: Chrooted | Container, info: dict, service: dict) -> list[str]:
    config = info.get("Config") or {}
    checked = []
    ports = [int(str(p).split(":")[-1]) for p in service.get("ports") or []]
    busy = [p for p in ports if not port_free(p)]
    if busy:
        raise Failed(f"ports {busy} are in use on this machine; the image's config listens there")
    started = time.monotonic()
    runner.start()
    printed = read_until(runner.out(), "serving https://", 60)
    checked.append(f"started in {time.monotonic() - started:.1f} s")
    key = next((w for line in printed for w in line.split() if w.startswith("gwk_")), None)
    if not key:
        raise Failed("the first start printed no dev API key")
    ca = runner.file("/opt/gateway/data/tls/ca.crt")
    if not ca.is_file():
        raise Failed("no dev CA at /opt/gateway/data/tls/ca.crt (the data volume)")

    tls = ssl.create_default_context(cafile=str(ca))
    body = (ROOT / "models" / "example.json").read_bytes()
    req = urllib.request.Request(
        "https://localhost:8443/v2/models/breast-cancer/infer", data=body,
        headers={"x-api-key": key, "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, context=tls, timeout=10) as r:
        answer = json.loads(r.read())
        variant, version = r.headers.get("x-model-variant"), r.headers.get("x-model-version")
        if r.status != 200 or not answer.get("outputs") or not variant:
            raise Failed(f"inference: {r.status} {answer}")
    say(f"TLS inference with the dev key: 200, variant {variant}, version {version}, outputs {[o['name'] for o in answer['outputs']]}")
    checked.append(f"TLS inference 200 ({variant} v{version})")

    with urllib.request.urlopen("http://127.0.0.1:9901/health/ready", timeout=5) as r:
        if r.status != 200:
            raise Failed(f"/health/ready: {r.status}")
    say("/health/ready: 200")
    checked.append("/health/ready 200")

    # docker keeps it in Config; podman beside it, at the top of `image inspect`.
    healthcheck = config.get("Healthcheck") or info.get("Healthcheck") or {}
    health = healthcheck.get("Test") or []
    if not health:
        raise Failed("the image has no HEALTHCHECK (built as OCI? podman needs --format docker)")
    if health[0] == "CMD-SHELL":
        health = ["/bin/sh", "-c", health[1]]
    elif health[0] == "CMD":
        health = health[1:]
    timeout = (healthcheck.get("Timeout") or 3e9) / 1e9
    r = runner.exec(health, timeout)
    if r.returncode != 0:
        raise Failed(f"HEALTHCHECK {health}: exit {r.returncode}: {r.stdout}{r.stderr}")
    say(f"HEALTHCHECK {' '.join(health)}: exit 0 ({r.stdout.strip()})")
    checked.append("HEALTHCHECK exit 0")

    if service.get("read_only"):
        # The data volume takes the image's user's writes; the root takes nobody's, root's
        # included (a permission check alone would refuse user 10001 anyway).
        writes = runner.exec(["/bin/sh", "-c", "touch /opt/gateway/data/.probe && rm /opt/gateway/data/.probe"], 10)
        refused = runner.exec(["/bin/sh", "-c", "touch /opt/gateway/.probe || touch /.probe"], 10, user="0:0")
        if writes.returncode != 0 or refused.returncode == 0:
            raise Failed(f"data volume writable: {writes.returncode == 0}; root read-only: {refused.returncode != 0} {refused.stderr.strip()}")
        say(f"the data volume writable by the image's user; the root read-only even for root ({refused.stderr.strip()})")
        checked.append("root read-only")

    grace = seconds(service.get("stop_grace_period", "10s"))
    signal_name = config.get("StopSignal") or "SIGTERM"
    sent = time.monotonic()
    runner.signal(signal_name)
    rest = []
    try:
        rest = read_until(runner.out(), "stopped", grace)
        status = runner.wait(max(0.1, grace - (time.monotonic() - sent)))
    except (Failed, subprocess.TimeoutExpired) as e:
        raise Failed(f"{signal_name}: not stopped within the grace period ({grace:.0f} s): {e}")
    took = time.monotonic() - sent
    if status != 0:
        raise Failed(f"{signal_name}: exit status {status}; printed {rest}")
    say(f"{signal_name}: stopped, exit status 0, {took:.2f} s (grace {grace:.0f} s)")
    checked.append(f"{signal_name} exit 0 in {took:.1f} s")
    return checked


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", default="ml-gateway:smoke")
    ap.add_argument("--no-build", action="store_true", help="check the image built last time")
    ap.add_argument("--remake-stand-ins", action="store_true", help="remove the stand-in base images made before, and make them again")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    built_in, made = None, []
    try:
        engine = pick_engine()
        say(f"engine: {engine} ({quiet([engine, '--version']).stdout.strip()})")
        dockerfile = DEPLOY / "Dockerfile"
        if args.remake_stand_ins:
            remove_stand_ins(engine)
        if not args.no_build:
            bases = base_images(dockerfile)
            say(f"base images: {', '.join(bases)}")
            made = ensure_bases(engine, bases)
            started = time.monotonic()
            run(build_command(engine, dockerfile, args.tag, ROOT, local_only=bool(made)))
            built_in = time.monotonic() - started
            say(f"built {args.tag} in {built_in:.0f} s")
        info = inspect(engine, args.tag)
        config = info.get("Config") or {}
        size_mb = info.get("Size", 0) / 1e6
        say(f"image {args.tag}: {info['Id'][:12]}, {size_mb:.0f} MB")
        service = compose_gateway()
        env = environment(config, service, secrets.token_hex(16))
        can_run = quiet([engine, "run", "--rm", "--entrypoint", "gateway", args.tag, "--version"], 60)
        if can_run.returncode == 0:
            say(f"containers run here: checking the image in a container ({engine} run)")
            runner = Container(engine, args.tag, config, service, env)
        else:
            why = (can_run.stderr.strip().splitlines() or ["?"])[-1][:160]
            loud(f"containers cannot run here ({why}): checking from the image's root file system under chroot instead")
            runner = Chrooted(engine, args.tag, config, service, env)
        try:
            checked = check(runner, info, service)
        except Exception:
            print(f"--- the gateway's log (stderr), last lines:\n{runner.stderr()}", flush=True)
            raise
        finally:
            runner.cleanup()
    except (Failed, OSError, subprocess.SubprocessError, urllib.error.URLError) as e:
        say(f"FAILED: {e}")
        print(f"image: {args.tag} FAILED: {e}", flush=True)
        return 1
    stand = f"; STAND-IN bases: {', '.join(made)}" if made else ""
    took = f", built in {built_in:.0f} s" if built_in is not None else ""
    print(f"image: {args.tag} {info['Id'][:12]} {size_mb:.0f} MB{took}{stand}; checked: {', '.join(checked)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
