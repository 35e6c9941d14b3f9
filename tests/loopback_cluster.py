"""`ray up` on this one machine: a throwaway user, sshd on loopback, a local-provider cluster.

Used by tests/integration_tests/test_cluster_rayup.py and benchmarks/bench_cluster.py. It does
what docs/tune-and-clusters.md ("On machines you already have") tells a user, with two
loopback addresses standing in for two machines: the head at 127.0.0.1 and one worker at
127.0.0.2, each reached over real SSH, launched by `ray up` from cluster/local.yaml.

    with LoopbackCluster() as lc:          # user, sshd, the user's Python, checkout, config
        lc.ray_up()                        # ray up -y --no-config-cache <config>
        lc.wait_for_nodes(2)               # the autoscaler brings the worker in over SSH
        lc.submit("seltrain tune --search quickstart --address auto ...")
        lc.ray_down()
    # user, home, sshd, and every process of the user are gone

Why a throwaway user: `ray up` and `ray down` run `ray stop`, which kills every Ray process of
the user it runs as, and other jobs on a shared machine run Ray as root. Everything Ray does
here runs as `seltrain-ray-<hex>`, so the clean-up can kill exactly that user's processes.

Why the user gets its own Python: the repo's .venv links its interpreter into root's pyenv
under /root (mode 700), which another user cannot execute, and /root stays closed. The user's
venv is made from the distribution's python3.X (the venv's CPython minor) and its
site-packages are hard links to the .venv's (requirements.lock, installed): same filesystem,
so instant, no copy and no download. The linked files stay root's (mode 644): the user can
read them but not write through them into the .venv. When hard links are impossible (another
filesystem) the lock is installed into it with pip instead. seltrain itself is left out: the
config's setup_commands install it from the synced checkout, as on a real node.

Loopback-only departures from cluster/local.yaml (made in `write_config`, each for a reason):
the addresses, user and key; spare ports instead of Ray's fixed defaults (two nodes and other
jobs share this machine); 1 CPU per node, so two concurrent trials need both nodes; a small
object store; RAY_TMPDIR in ~/.bashrc (Ray's default /tmp/ray may be root's) and a temp dir
of the worker's own (see write_config); and no `ray stop` before the worker's `ray start`,
because on one machine as one user it would stop the head too. Ray names the head's node by
this machine's address, not 127.0.0.1 (it replaces loopback addresses on the head).

Needs root (useradd, sshd), openssh-server, rsync and /usr/bin/python3.X (`make setup`
installs the system packages as root); `unavailable()` says what is missing.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

import yaml

from helpers import REPO
HEAD, WORKER = "127.0.0.1", "127.0.0.2"
USER_PREFIX = "seltrain-ray-"
MARKER = ".seltrain-loopback.json"
SYSTEM_PYTHON = f"/usr/bin/python3.{sys.version_info.minor}"
# Ray's minimum is 75 MB; two nodes share this machine's /dev/shm and memory.
OBJECT_STORE_BYTES = 100 * 1024 ** 2
TOOLS = ("sshd", "ssh", "ssh-keygen", "rsync", "useradd", "userdel", "ss")
# The quickstart search (tune/quickstart.yaml: 4 alphas x 1 seed, 1 CPU per trial, 2 at a
# time) cut to one short epoch: 256 training and 256 validation images, no loader processes.
QUICKSTART_TINY = ["data.limit_train=256", "data.val_size=256", "train.epochs=1",
                   "data.num_workers=0", "train.eval_batch_size=1000", "run.progress=false"]


class LoopbackError(RuntimeError):
    """A step of the loopback cluster failed; the message carries the step's output tail."""


def unavailable() -> str | None:
    """Why the loopback cluster cannot run here, or None."""
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (creates a throwaway user and runs sshd)"
    missing = [t for t in TOOLS if not (shutil.which(t) or shutil.which(t, path="/usr/sbin"))]
    if missing:
        return (f"missing {', '.join(missing)}: install openssh-server rsync iproute2 "
                "(make setup does, as root)")
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"needs {SYSTEM_PYTHON} (the venv's CPython minor) for the cluster user's venv"
    if sys.prefix == sys.base_prefix:
        return "run from the repo's .venv (its site-packages are the cluster user's packages)"
    return None


def free_ports(n: int) -> list[int]:
    """n distinct ports free on every address (bound on 0.0.0.0, then released)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("0.0.0.0", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def listening(ports) -> set[int]:
    """Which of `ports` some process listens on (TCP, any address), from `ss -ltnH`."""
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    seen = set()
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[3].rsplit(":", 1)[-1].isdigit():
            seen.add(int(cols[3].rsplit(":", 1)[-1]))
    return seen & set(ports)


def listen_addresses(port: int) -> set[str]:
    """The local addresses some process listens on at TCP `port` (`ss -ltnH`)."""
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         check=True).stdout
    return {ln.split()[3].rsplit(":", 1)[0].strip("[]") for ln in out.splitlines()
            if len(ln.split()) >= 4}


def processes_of(uid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose real uid is `uid`."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                real = next(int(ln.split()[1]) for ln in f if ln.startswith("Uid:"))
            if real != uid:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            out.append((int(pid), cmd))
        except (OSError, StopIteration, ValueError):
            continue  # exited meanwhile
    return out


def _kill_uid(uid: int, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, every process of `uid` (only ever the throwaway user's)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid, _ in processes_of(uid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not processes_of(uid):
            return


def _tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _pid_alive(pid: int, started: float | None) -> bool:
    try:
        import psutil

        p = psutil.Process(pid)
        return started is None or abs(p.create_time() - started) < 1.0
    except Exception:  # noqa: BLE001 - no such process (or no psutil: assume gone)
        return False


def _remove_user(user: str, uid: int | None, work: str | None, sshd_pid: int | None,
                 sshd_config: str | None) -> None:
    """Everything a LoopbackCluster made for `user`, gone; safe to call repeatedly."""
    if uid is not None:
        _kill_uid(uid)
    if sshd_pid and sshd_config:
        _stop_sshd(sshd_pid, sshd_config)
    try:
        pwd.getpwnam(user)
        exists = True
    except KeyError:
        exists = False
    for _ in range(10):
        if not exists:
            break
        r = subprocess.run(["userdel", "-r", user], capture_output=True, text=True)
        if r.returncode in (0, 6, 12):  # 6: no such user; 12: home already gone
            break
        if uid is not None:
            _kill_uid(uid, grace=1.0)  # "currently used by process": a straggler
        time.sleep(0.5)
    if uid is not None:
        # What Ray's SSH runner keeps outside the home: /tmp/ray_ssh_<hash>/ control sockets.
        for top in ("/tmp", "/dev/shm"):
            for name in os.listdir(top):
                path = os.path.join(top, name)
                try:
                    if os.lstat(path).st_uid == uid:
                        shutil.rmtree(path) if os.path.isdir(path) and not \
                            os.path.islink(path) else os.unlink(path)
                except OSError:
                    pass
    if work and os.path.basename(work).startswith("seltrain-loopback-"):
        shutil.rmtree(work, ignore_errors=True)


def _stop_sshd(pid: int, config: str) -> None:
    """Stop the sshd started with `config` (checked on its command line) and its children."""
    try:
        import psutil

        p = psutil.Process(pid)
        if config not in " ".join(p.cmdline()):
            return  # the pid was reused by something else
        procs = [p] + p.children(recursive=True)
        for q in procs:
            try:
                q.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=5)
        for q in alive:
            try:
                q.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
    except Exception:  # noqa: BLE001 - already gone
        pass


def reap_stale() -> list[str]:
    """Remove the users (and sshd) of LoopbackClusters whose owning process died uncleanly."""
    reaped = []
    for pw in pwd.getpwall():
        if not pw.pw_name.startswith(USER_PREFIX):
            continue
        try:
            with open(os.path.join(pw.pw_dir, MARKER)) as f:
                m = json.load(f)
        except (OSError, ValueError):
            m = {}
            try:
                if time.time() - os.stat(pw.pw_dir).st_ctime < 120:
                    continue  # just made by a starting cluster, marker not yet written
            except OSError:
                pass
        if m.get("owner_pid") and _pid_alive(m["owner_pid"], m.get("owner_started")):
            continue  # a live cluster of another test or benchmark
        _remove_user(pw.pw_name, pw.pw_uid, m.get("work"), m.get("sshd_pid"),
                     m.get("sshd_config"))
        reaped.append(pw.pw_name)
    return reaped


class LoopbackCluster:
    """A two-node Ray cluster on loopback, launched with `ray up` as a throwaway user."""

    def __init__(self, repo: str = REPO, *, cpus_per_node: int = 1):
        self.repo = repo
        self.cpus_per_node = cpus_per_node
        self.tag = secrets.token_hex(3)
        self.user = USER_PREFIX + self.tag
        self.home = f"/home/{self.user}"
        self.uid: int | None = None
        self.gid: int | None = None
        self.src = f"{self.home}/src"                 # "your machine's" checkout
        self.venv = f"{self.home}/seltrain-venv"      # the nodes' Python (local.yaml's path)
        self.config = f"{self.home}/loopback.yaml"
        self.shared = f"{self.home}/shared"           # the "NFS": one machine, one disk
        self.work: str | None = None                  # root-only: sshd's files, logs
        self.sshd: subprocess.Popen | None = None
        self.sshd_config: str | None = None
        self.ports: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.is_up = False
        self._log_n = 0
        self._old_sigterm = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "LoopbackCluster":
        if threading.current_thread() is threading.main_thread():
            # A plain SIGTERM (CI cancelling) would skip `finally`; make it an exception.
            def _term(signum, frame):
                raise SystemExit(128 + signum)
            self._old_sigterm = signal.signal(signal.SIGTERM, _term)
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        why = unavailable()
        if why:
            raise LoopbackError(why)
        reap_stale()
        self.work = tempfile.mkdtemp(prefix=f"seltrain-loopback-{self.tag}-")
        os.makedirs(os.path.join(self.work, "logs"))
        names = ("ssh", "gcs", "dashboard", "client", "om_head", "om_worker", "agent_head",
                 "agent_worker")
        self.ports = dict(zip(names, free_ports(len(names))))
        for step in (self._make_user, self._start_sshd, self._build_venv, self._copy_checkout,
                     self.write_config, self._make_token):
            t0 = time.perf_counter()
            step()
            self.timings[step.__name__.lstrip("_")] = time.perf_counter() - t0

    def close(self) -> None:
        """Take everything down: cluster, processes, sshd, user, files. Idempotent."""
        try:
            if self.is_up:
                try:
                    self.ray_down(timeout=120)
                except Exception:  # noqa: BLE001 - killed below regardless
                    pass
            _remove_user(self.user, self.uid, self.work,
                         self.sshd.pid if self.sshd else None, self.sshd_config)
            if self.sshd is not None:
                try:
                    self.sshd.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self.sshd = None
            self.work = None
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None

    # ------------------------------------------------------------------ running as the user
    @property
    def env(self) -> dict[str, str]:
        """The environment of "your machine's" shell: the user's venv first on PATH."""
        return {"HOME": self.home, "USER": self.user, "LOGNAME": self.user,
                "SHELL": "/bin/bash", "LANG": "C.UTF-8",
                "PATH": f"{self.venv}/bin:/usr/local/bin:/usr/bin:/bin",
                # This "machine's" Ray files (cluster state, config cache), apart from the
                # nodes' (~/t, set in ~/.bashrc by the config) as on separate machines.
                "RAY_TMPDIR": f"{self.home}/l", "TMPDIR": f"{self.home}/l",
                # The documented instruction for clients of a token-auth cluster.
                "RAY_AUTH_MODE": "token",
                "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}

    def popen(self, cmd: str, *, cwd: str | None = None, log: str = "cmd",
              env: dict | None = None) -> tuple[subprocess.Popen, str]:
        """Start `bash -c cmd` as the user; output goes to a log file (path returned)."""
        self._log_n += 1
        path = os.path.join(self.work, "logs", f"{self._log_n:02d}-{log}.log")
        f = open(path, "w")
        f.write(f"$ {cmd}\n")
        f.flush()
        p = subprocess.Popen(["bash", "-c", cmd], cwd=cwd or self.home,
                             env={**self.env, **(env or {})}, user=self.uid, group=self.gid,
                             extra_groups=[], stdin=subprocess.DEVNULL, stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True)
        f.close()
        return p, path

    def wait(self, p: subprocess.Popen, path: str, *, timeout: float, what: str,
             check: bool = True) -> str:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise LoopbackError(f"{what}: timed out after {timeout:.0f} s\n"
                                f"{_tail(open(path).read())}") from None
        out = open(path).read()
        if check and p.returncode != 0:
            raise LoopbackError(f"{what}: exit {p.returncode}\n{_tail(out)}")
        return out

    def run(self, cmd: str, *, timeout: float, cwd: str | None = None, check: bool = True,
            log: str = "cmd", env: dict | None = None) -> str:
        """Run `bash -c cmd` as the user; its output (stdout and stderr). Raises on failure."""
        p, path = self.popen(cmd, cwd=cwd, log=log, env=env)
        return self.wait(p, path, timeout=timeout, what=cmd, check=check)

    # ------------------------------------------------------------------ set-up steps
    def _make_user(self) -> None:
        # Password "*": no password login, but not "locked" ("!"), which sshd refuses even
        # for keys when it does not use PAM.
        subprocess.run(["useradd", "--create-home", "--home-dir", self.home, "--shell",
                        "/bin/bash", "--user-group", "--password", "*", self.user],
                       check=True, capture_output=True, text=True)
        pw = pwd.getpwnam(self.user)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self._write_marker()
        self.run("ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519 && "
                 "cp ~/.ssh/id_ed25519.pub ~/.ssh/authorized_keys && "
                 "chmod 600 ~/.ssh/authorized_keys && mkdir -p ~/l ~/shared",
                 timeout=30, log="ssh-keygen")
        # Ray's schema has no auth.ssh_port: the client config carries the port, for `ray up`
        # here and for the head's own SSH to its workers (same home on one machine).
        self._write_as_user(f"{self.home}/.ssh/config", (
            "# seltrain loopback cluster: sshd on a spare port of 127.0.0.1 and 127.0.0.2\n"
            f"Host {HEAD} {WORKER}\n"
            f"    Port {self.ports['ssh']}\n"
            "    StrictHostKeyChecking no\n"
            "    UserKnownHostsFile ~/.ssh/known_hosts\n"), mode=0o600)

    def _write_marker(self) -> None:
        import psutil

        m = {"owner_pid": os.getpid(), "owner_started": psutil.Process().create_time(),
             "work": self.work, "sshd_pid": self.sshd.pid if self.sshd else None,
             "sshd_config": self.sshd_config}
        with open(os.path.join(self.home, MARKER), "w") as f:
            json.dump(m, f)

    def _write_as_user(self, path: str, text: str, mode: int = 0o644) -> None:
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, mode)
        os.chown(path, self.uid, self.gid)

    def _start_sshd(self) -> None:
        sshd = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin")
        d = self.work
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                        f"{d}/ssh_host_ed25519_key"], check=True, capture_output=True)
        port = self.ports["ssh"]
        self.sshd_config = f"{d}/sshd_config"
        with open(self.sshd_config, "w") as f:
            f.write(f"""# sshd for one loopback cluster (tests/loopback_cluster.py)
ListenAddress {HEAD}:{port}
ListenAddress {WORKER}:{port}
HostKey {d}/ssh_host_ed25519_key
PidFile {d}/sshd.pid
AllowUsers {self.user}
PermitRootLogin no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
PrintMotd no
# Ray opens many sessions at once (ControlMaster, rsync, the autoscaler's updaters).
MaxSessions 64
MaxStartups 64:30:128
""")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        t = subprocess.run([sshd, "-t", "-f", self.sshd_config], capture_output=True, text=True)
        if t.returncode != 0:
            raise LoopbackError(f"sshd -t: {t.stderr.strip()}")
        log = open(os.path.join(d, "logs", "sshd.log"), "w")
        self.sshd = subprocess.Popen([sshd, "-D", "-e", "-f", self.sshd_config],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self._write_marker()
        deadline = time.monotonic() + 15
        for host in (HEAD, WORKER):
            while True:
                if self.sshd.poll() is not None:
                    raise LoopbackError("sshd exited: " +
                                        open(os.path.join(d, "logs", "sshd.log")).read())
                try:
                    socket.create_connection((host, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise LoopbackError(f"sshd not listening on {host}:{port}") from None
                    time.sleep(0.1)
        self.run(f"ssh -o BatchMode=yes {WORKER} true", timeout=30, log="ssh-check")

    def _build_venv(self) -> None:
        self.run(f"{SYSTEM_PYTHON} -m venv --without-pip {self.venv}", timeout=60, log="venv")
        src = sysconfig.get_paths()["purelib"]
        dst = os.path.join(self.venv, "lib", f"python3.{sys.version_info.minor}",
                           "site-packages")
        linked = subprocess.run(["cp", "-al", f"{src}/.", f"{dst}/"],
                                capture_output=True, text=True)
        if linked.returncode == 0:
            # seltrain itself is not part of the lock: the config's setup_commands install it
            # from the synced checkout. Unlinking the .venv's editable install here leaves the
            # .venv's own files alone (they are other names for the same inodes).
            for name in os.listdir(dst):
                if re.match(r"(__editable__[._]+seltrain|seltrain-.*\.dist-info$)", name):
                    p = os.path.join(dst, name)
                    shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
            # Only the directories become the user's (for pip and __pycache__); chown on a
            # linked file would change the .venv's file.
            subprocess.run(["find", dst, "-type", "d", "-exec", "chown",
                            f"{self.uid}:{self.gid}", "{}", "+"], check=True)
            self._copy_console_scripts()
        else:
            # Another filesystem: install the lock into it for real (needs the package index;
            # the test machines never take this branch). pip runs as root with the
            # .venv's pip, then the whole venv, holding no links, becomes the user's.
            shutil.rmtree(dst)
            os.makedirs(dst)
            log = os.path.join(self.work, "logs", "pip-lock.log")
            with open(log, "w") as f:
                r = subprocess.run([sys.executable, "-m", "pip", "--python",
                                    f"{self.venv}/bin/python", "install", "-q",
                                    "--disable-pip-version-check", "-r",
                                    os.path.join(self.repo, "requirements.lock")],
                                   stdout=f, stderr=subprocess.STDOUT, timeout=3600)
            if r.returncode != 0:
                raise LoopbackError(f"hard links failed ({linked.stderr.strip()[:200]}) and "
                                    f"so did pip:\n{_tail(open(log).read())}")
            subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", self.venv], check=True)

    def _copy_console_scripts(self) -> None:
        """ray, serve, tensorboard, ... from the .venv, pointing at the user's Python."""
        old_bin = os.path.join(sys.prefix, "bin")
        old_py = os.path.join(old_bin, "python")
        new_py = os.path.join(self.venv, "bin", "python")
        for name in sorted(os.listdir(old_bin)):
            path = os.path.join(old_bin, name)
            new = os.path.join(self.venv, "bin", name)
            if name == "seltrain" or os.path.islink(path) or os.path.exists(new) \
                    or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                head = f.read(2)
                if head != b"#!":
                    continue
                text = head + f.read()
            try:
                script = text.decode()
            except UnicodeDecodeError:
                continue
            first = script.split("\n", 3)[:3]
            if not any(old_py in ln for ln in first):
                continue  # not a console script of this venv (activate scripts, etc.)
            self._write_as_user(new, script.replace(old_py, new_py), mode=0o755)

    def _copy_checkout(self) -> None:
        """The files a fresh clone would have (tracked and new, not ignored), as the user's."""
        try:
            out = subprocess.run(["git", "-C", self.repo, "ls-files", "-z", "--cached",
                                  "--others", "--exclude-standard"], capture_output=True,
                                 check=True).stdout
            files = sorted({f for f in out.decode().split("\0") if f})
        except (subprocess.CalledProcessError, FileNotFoundError):
            files = []
            skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache"}
            for d, dirs, names in os.walk(self.repo):
                dirs[:] = [x for x in dirs if x not in skip and not x.endswith(".egg-info")]
                files += [os.path.relpath(os.path.join(d, n), self.repo) for n in names]
        for rel in files:
            s, t = os.path.join(self.repo, rel), os.path.join(self.src, rel)
            if not os.path.lexists(s):
                continue  # deleted in the working tree, not yet in git
            os.makedirs(os.path.dirname(t), exist_ok=True)
            if os.path.islink(s):
                os.symlink(os.readlink(s), t)
            else:
                shutil.copy2(s, t)
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", self.src], check=True)

    def write_config(self) -> None:
        """The loopback variant of cluster/local.yaml (its commands, with loopback flags)."""
        with open(os.path.join(self.repo, "cluster", "local.yaml")) as f:
            cfg = yaml.safe_load(f)
        p = self.ports
        cfg["cluster_name"] = f"seltrain-loopback-{self.tag}"
        cfg["provider"] = {"type": "local", "head_ip": HEAD, "worker_ips": [WORKER]}
        cfg["auth"] = {"ssh_user": self.user, "ssh_private_key": "~/.ssh/id_ed25519"}
        cfg["min_workers"] = cfg["max_workers"] = 1
        cfg["setup_commands"] = [
            "mkdir -p ~/t && { grep -qs RAY_TMPDIR ~/.bashrc || "
            "echo 'export RAY_TMPDIR=$HOME/t TMPDIR=$HOME/t' >> ~/.bashrc; }",
            *cfg["setup_commands"]]

        def swap(cmd: str, old: str, new: str) -> str:
            if old not in cmd:
                raise LoopbackError(f"cluster/local.yaml: expected {old!r} in {cmd!r}; "
                                    "update tests/loopback_cluster.py to match")
            return cmd.replace(old, new)

        node = (f" --num-cpus={self.cpus_per_node} --object-store-memory={OBJECT_STORE_BYTES}")
        head = []
        for c in cfg["head_start_ray_commands"]:
            if "ray start" in c:
                c = swap(c, "--port=6379", f"--port={p['gcs']}")
                c = swap(c, "--object-manager-port=8076", f"--object-manager-port={p['om_head']}")
                # No --node-ip-address: Ray maps 127.0.0.1 to this machine's own address
                # (services.resolve_ip_for_localhost), so the head's node IP is that one.
                c += (f" --dashboard-port={p['dashboard']}"
                      f" --ray-client-server-port={p['client']}"
                      f" --dashboard-agent-listen-port={p['agent_head']}" + node)
            head.append(c)
        worker = []
        for c in cfg["worker_start_ray_commands"]:
            if c.strip() == "ray stop":
                continue  # one machine, one user: it would stop the head too
            if "ray start" in c:
                c = swap(c, "$RAY_HEAD_IP:6379", f"$RAY_HEAD_IP:{p['gcs']}")
                c = swap(c, "--object-manager-port=8076",
                         f"--object-manager-port={p['om_worker']}")
                # Its own temp dir, as on its own disk: a worker node shares the head's by
                # default, and its runtime-env agent would then delete the job's working_dir
                # (the driver's cwd on the head) when the worker's last trial ends.
                c += (f" --node-ip-address={WORKER} --temp-dir=$HOME/w/ray"
                      f" --dashboard-agent-listen-port={p['agent_worker']}" + node)
            worker.append(c)
        cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"] = head, worker
        self._write_as_user(self.config, (
            "# Generated by tests/loopback_cluster.py from cluster/local.yaml: two loopback\n"
            "# addresses as two machines, as a throwaway user (see that module's docstring).\n"
            + yaml.safe_dump(cfg, sort_keys=False, width=200)))

    def _make_token(self) -> None:
        # What docs/tune-and-clusters.md tells a user to do once: the token every node gets
        # (file_mounts).
        self.run("ray get-auth-token --generate >/dev/null", timeout=120, log="token")

    # ------------------------------------------------------------------ the documented commands
    @property
    def dashboard(self) -> str:
        return f"http://{HEAD}:{self.ports['dashboard']}"

    @property
    def ray_ports(self) -> list[int]:
        return [v for k, v in self.ports.items() if k != "ssh"]

    def ray_up(self, timeout: float = 600) -> str:
        t0 = time.perf_counter()
        self.is_up = True  # even a failed `ray up` may have started something: close() downs
        out = self.run(f"ray up -y --no-config-cache {self.config}", cwd=self.src,
                       timeout=timeout, log="ray-up")
        self.timings["ray_up"] = time.perf_counter() - t0
        return out

    def ray_exec(self, cmd: str, timeout: float = 120) -> str:
        return self.run(f"ray exec {self.config} {_quote(cmd)}", cwd=self.src, timeout=timeout,
                        log="ray-exec")

    def nodes(self, alive_only: bool = True) -> list[dict]:
        """The cluster's nodes from the State API (`ray list nodes`): node_id, node_ip, ..."""
        flt = " --filter state=ALIVE" if alive_only else ""
        out = self.run(f"ray list nodes --address {HEAD}:{self.ports['gcs']} --format json"
                       + flt, timeout=120, log="list-nodes")
        return json_tail(out)

    def node_ips(self) -> list[str]:
        """IPs of the alive nodes. The head's is this machine's own address, not 127.0.0.1:
        Ray replaces a loopback node address on the head (resolve_ip_for_localhost)."""
        return sorted(n["node_ip"] for n in self.nodes())

    def worker_started(self) -> bool:
        """The head's autoscaler reports the worker's `ray start` done (its monitor log)."""
        path = f"{self.home}/t/ray/session_latest/logs/monitor.out"
        try:
            with open(path, errors="replace") as f:
                return f"NodeUpdater: {WORKER}: Ray start commands succeeded" in f.read()
        except OSError:
            return False

    def wait_for_nodes(self, n: int = 2, timeout: float = 240) -> float:
        """Seconds until `n` nodes are alive (the worker joins over SSH via the autoscaler).

        Reads the head's monitor log until the worker's updater is done, then asks the State
        API: each `ray list` is a Python start-up, which on 2 busy cores would slow the very
        set-up it waits for."""
        t0 = time.perf_counter()
        asked = 0.0
        while True:
            now = time.perf_counter() - t0
            if self.worker_started() or now - asked > 20:
                asked = now
                try:
                    if len(self.node_ips()) >= n:
                        return time.perf_counter() - t0
                except LoopbackError:
                    pass  # GCS busy or restarting: ask again
            if now > timeout:
                raise LoopbackError(f"{n} nodes not alive after {timeout:.0f} s\n"
                                    + self.autoscaler_log())
            time.sleep(0.5 if not self.worker_started() else 2)

    def autoscaler_log(self, n: int = 3000) -> str:
        """Tail of the head's monitor log (why a worker did not come)."""
        logs = f"{self.home}/t/ray/session_latest/logs"
        parts = []
        for name in ("monitor.log", "monitor.out", "monitor.err"):
            p = os.path.join(logs, name)
            if os.path.exists(p):
                parts.append(f"--- {name}\n" + _tail(open(p, errors="replace").read(), n))
        return "\n".join(parts)

    def submit(self, entrypoint: str, *, wait: bool = True, timeout: float = 900):
        """`ray job submit --working-dir . -- <entrypoint>` from the checkout."""
        cmd = (f"ray job submit --address {self.dashboard} --working-dir . -- {entrypoint}")
        p, path = self.popen(cmd, cwd=self.src, log="job-submit")
        if not wait:
            return p, path
        return self.wait(p, path, timeout=timeout, what=cmd)

    def quickstart(self) -> tuple[str, str]:
        """(the documented `seltrain tune --search quickstart --address auto` with
        QUICKSTART_TINY and the shared storage, the experiment folder it fills)."""
        sets = " ".join(f"--set {s}" for s in QUICKSTART_TINY)
        return (f"seltrain tune --search quickstart --address auto --storage {self.shared}/tune "
                f"{sets}", f"{self.shared}/tune/quickstart")

    def ray_down(self, timeout: float = 300) -> str:
        t0 = time.perf_counter()
        out = self.run(f"ray down -y {self.config}", cwd=self.src, timeout=timeout,
                       log="ray-down")
        self.is_up = False
        self.timings["ray_down"] = time.perf_counter() - t0
        return out

    def leftovers(self, timeout: float = 30) -> tuple[list[tuple[int, str]], set[int]]:
        """(the user's processes, Ray's ports still listening), after up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            procs, ports = processes_of(self.uid), listening(self.ray_ports)
            if (not procs and not ports) or time.monotonic() > deadline:
                return procs, ports
            time.sleep(0.5)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def json_tail(out: str):
    """The JSON document at the end of a CLI's output (after any warnings it printed)."""
    i = min([j for j in (out.find("["), out.find("{")) if j >= 0], default=-1)
    while i >= 0:
        try:
            return json.loads(out[i:])
        except ValueError:
            nxt = [j for j in (out.find("[", i + 1), out.find("{", i + 1)) if j >= 0]
            i = min(nxt, default=-1)
    raise LoopbackError(f"no JSON in output:\n{_tail(out)}")
