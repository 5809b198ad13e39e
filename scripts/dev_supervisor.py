#!/usr/bin/env python3
"""dev_supervisor.py: the process supervisor of `make run` (scripts/run.sh prepares DATA_DIR,
renders the configs and execs it). It starts the log forwarder (LOG_FORWARD), the app node(s)
and nginx, restarts what dies, and stops everything on SIGINT/SIGTERM. What it does and why:
docs/development.md, "make run".

    dev_supervisor.py serve         the supervisor (settings: the environment run.sh exports)
    dev_supervisor.py append FILE   copies stdin to FILE line by line (the app's stderr)
    dev_supervisor.py redact FILE   the same, redacting nginx's error lines (nginx's stderr)
    dev_supervisor.py put FILE      replaces FILE by stdin, whole (never written through a link)
The helpers act as TDAPI_OWNER (the service user, when run.sh runs as root). Run as root by
run.sh before anything starts (exit status 78 and a message on a refusal):
    dev_supervisor.py root-file NAME PATH  PATH to stdout if only root can change it (TLS files)
    dev_supervisor.py data-dir PATH        DATA_DIR made if missing; its physical path to stdout
    dev_supervisor.py own-data-dir PATH USER  DATA_DIR (the directory open on fd 9) given to USER
    dev_supervisor.py temp-dir PATH USER   NGINX_TEMP_DIR made if missing and given to USER
"""
import json
import os
import pwd
import re
import select
import signal
import stat
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
NOT_RESTARTED = (78, 2)  # start-up failure, bad usage: the same start would fail the same way
NGINX_QUICK_MAX = 5  # nginx failing on its own this often in a row stops everything
OWN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
               signal.SIGUSR2)


def status_of(returncode):
    """A child's exit status as a shell reports it: 128 + N for a death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def restart_delay(quick):
    """Seconds before a restart after `quick` short runs in a row: 0, 0, 1, 2 ... up to 5."""
    return 0 if quick <= 1 else min(quick - 1, 5)


def redact(line):
    """nginx's error line without the Referer, query strings or unprintable bytes."""
    line = re.sub(rb", referrer: .*$", b"", line.rstrip(b"\n"))
    line = re.sub(rb"[?][^ ]*", b"?[redacted]", line)
    return re.sub(rb"[^\x20-\x7e\t]", b"?", line)


def json_line(level, event, detail):
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".%03dZ" % (time.time() % 1 * 1000)
    return json.dumps({"ts": ts, "level": level, "event": event, "detail": detail},
                      separators=(",", ":")) + "\n"


def write_all(fd, data):
    """Writes all of data (a short write, e.g. on a full disk, is continued: the rest fails)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append(path, data):
    """Appends data to path (created 0600), never through a link at its last component."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def put_file(path, data):
    """Replaces path by a whole new file (a link there is replaced, never written through)."""
    tmp = os.path.join(os.path.dirname(path), ".put.%d" % os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def tail(path, n):
    with open(path, "rb") as f:
        return b"".join(f.readlines()[-n:])


def copy_lines(path, transform):
    """The `append` and `redact` helpers: stdin to path, a line at a time, until EOF; a line
    that cannot be written (a full disk) is dropped."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    try:
        append(path, b"")  # the file exists from the start
    except OSError:
        pass
    for line in sys.stdin.buffer:
        try:
            append(path, transform(line))
        except OSError:
            pass


# -- root's paths (run.sh as root, before anything starts) -------------------------------------
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_LINK = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC  # the entry itself, a link or not
MAX_LINKS, MAX_MADE, MAX_DEPTH = 40, 64, 64


class Refused(Exception):
    """What run.sh (root) will not do, said so that the operator can fix it."""


def user_of(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "uid %d" % uid


def check_step(dir_st, where, st, here):
    """strict: only root may change what `here` (its entry: st) names in the directory `where`."""
    if dir_st.st_uid != 0:
        raise Refused("%s is %s's, not root's" % (where, user_of(dir_st.st_uid)))
    if dir_st.st_mode & 0o022:
        if not dir_st.st_mode & stat.S_ISVTX:
            raise Refused("%s is writable by others than root (mode %04o)"
                          % (where, stat.S_IMODE(dir_st.st_mode)))
        if st.st_uid != 0:  # sticky (like /tmp): what root owns in it only root may move
            raise Refused("%s is %s's, in %s, which others than root may write (sticky, mode %04o)"
                          % (here, user_of(st.st_uid), where, stat.S_IMODE(dir_st.st_mode)))


def walk(path, strict=False, create=None, last_link_ok=True, final_file=False):
    """Opens path as root from / one component at a time, each relative to the directory before
    it and never through a link (openat with O_NOFOLLOW), so a directory on its way swapped for a
    link while run.sh works cannot redirect it. A link is followed only if root made it; one of
    another user is refused. strict (what root reads for the service user): each directory passed
    must be root's and not writable by group or others (a sticky one, like /tmp, only for what
    root owns in it), each link root's. create: missing directories are made, 0755 on the way and
    `create` for the last. Returns (fds, physical path): the open directories from / to path's
    own (with final_file, its parent's then the file's, opened for reading)."""
    if not path.startswith("/"):
        path = os.path.join(os.getcwd(), path)
    todo = [p for p in reversed(path.split("/")) if p not in ("", ".")]
    fds, real, links, made = [os.open("/", O_DIR)], [], 0, 0
    try:
        while todo:
            name = todo.pop()
            if name == "..":
                if real:
                    real.pop()
                    os.close(fds.pop())
                continue
            where, here, last = "/" + "/".join(real), "/" + "/".join(real + [name]), not todo
            try:
                lfd = os.open(name, O_LINK, dir_fd=fds[-1])
            except FileNotFoundError:
                if create is None or made >= MAX_MADE:
                    raise Refused("%s does not exist" % here)
                made += 1
                old = os.umask(0o022)
                try:
                    os.mkdir(name, create if last else 0o755, dir_fd=fds[-1])
                except FileExistsError:
                    pass
                finally:
                    os.umask(old)
                todo.append(name)
                continue
            try:
                st = os.fstat(lfd)
                if strict:
                    check_step(os.fstat(fds[-1]), where, st, here)
                if stat.S_ISLNK(st.st_mode):
                    if st.st_uid != 0:
                        raise Refused("%s is a symbolic link that %s made; run.sh (root) will not "
                                      "follow it: remove it" % (here, user_of(st.st_uid)))
                    if last and not last_link_ok:
                        raise Refused("%s is a symbolic link; name the directory itself" % here)
                    links += 1
                    if links > MAX_LINKS:
                        raise Refused("%s: too many symbolic links" % path)
                    target = os.readlink("", dir_fd=lfd)  # this very link's (O_PATH)
                    if target.startswith("/"):
                        while len(fds) > 1:
                            os.close(fds.pop())
                        real = []
                    todo.extend(p for p in reversed(target.split("/")) if p not in ("", "."))
                    continue
                if last and final_file:
                    if not stat.S_ISREG(st.st_mode):
                        raise Refused("%s is not a regular file" % here)
                    if strict and (st.st_uid != 0 or st.st_mode & 0o022):
                        raise Refused("%s is %s's, mode %04o: it must be root's and not writable by "
                                      "group or others" % (here, user_of(st.st_uid),
                                                           stat.S_IMODE(st.st_mode)))
                    # Another name of the same file may be one the service user made (a hard
                    # link to a secret, where protected_hardlinks is off).
                    if strict and st.st_nlink > 1:
                        raise Refused("%s has %d names (hard links): it must have one"
                                      % (here, st.st_nlink))
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                                 dir_fd=fds[-1])
                    opened = os.fstat(fd)
                    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                        os.close(fd)
                        raise Refused("%s changed while it was checked" % here)
                elif not stat.S_ISDIR(st.st_mode):
                    raise Refused("%s is not a directory" % here)
                else:
                    fd = os.open(".", O_DIR, dir_fd=lfd)  # this very directory
            finally:
                os.close(lfd)
            fds.append(fd)
            real.append(name)
        if final_file and len(fds) == 1:
            raise Refused("%s is not a regular file" % path)
        return fds, "/" + "/".join(real)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def close_all(fds):
    for fd in fds:
        os.close(fd)


def root_file(name, path):
    """TLS_CERT or TLS_KEY, read as root for nginx running as the service user: only from where
    no one but root can change what the path names (else the service user could have any file
    root can read copied to it)."""
    try:
        fds, _ = walk(path, strict=True, final_file=True)
    except Refused as e:
        raise Refused("%s=%s: %s. run.sh (root) copies TLS_CERT and TLS_KEY for the service user "
                      "only from where only root can change them: the file, each directory on its "
                      "way and each link root's, no directory writable by group or others (a "
                      "sticky one, like /tmp, only for what root owns in it); e.g. "
                      "/etc/testdata-api/tls/" % (name, path, e))
    try:
        with os.fdopen(os.dup(fds[-1]), "rb") as f:
            write_all(1, f.read())
    finally:
        close_all(fds)


def adopt(st, uid, where):
    """What root gives the service user must be root's or the service user's already: a file
    or directory another user made may still be open to them (a descriptor outlives chown and
    chmod), e.g. the database they created and hold open to read what the service writes."""
    if st.st_uid not in (0, uid):
        raise Refused("%s is %s's; run.sh (root) gives the service user only what root or it "
                      "owns (another user may still have it open): move it out, or start from "
                      "a DATA_DIR of root's or the service user's" % (where, user_of(st.st_uid)))


def chown_tree(fd, uid, gid, where, depth=0, check_only=False):
    """The directory open on fd and all under it given to uid:gid, links excepted (nor followed),
    each directory entered from the one above it without following a link. The whole tree is
    checked first (check_only), so that a refusal leaves nothing given away."""
    if depth == 0 and not check_only:
        chown_tree(fd, uid, gid, where, 0, check_only=True)
    if depth > MAX_DEPTH:
        raise Refused("%s: directories nested too deep" % where)
    adopt(os.fstat(fd), uid, where)
    if not check_only:
        os.fchown(fd, uid, gid)
    for name in os.listdir(fd):
        try:
            lfd = os.open(name, O_LINK, dir_fd=fd)
        except FileNotFoundError:
            continue
        try:
            st = os.fstat(lfd)
            if stat.S_ISLNK(st.st_mode):
                continue
            adopt(st, uid, where + "/" + name)
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(".", O_DIR, dir_fd=lfd)
                try:
                    chown_tree(sub, uid, gid, where + "/" + name, depth + 1, check_only)
                finally:
                    os.close(sub)
            elif st.st_nlink > 1 and st.st_uid != uid:
                raise Refused("%s/%s has %d hard links (the same file elsewhere); run.sh (root) "
                              "will not give it to %s: copy it" % (where, name, st.st_nlink,
                                                                    user_of(uid)))
            elif not check_only:
                os.chown("/proc/self/fd/%d" % lfd, uid, gid)  # this very file
        finally:
            os.close(lfd)


def data_dir(path):
    """DATA_DIR resolved (and made) as root: its physical path, no link but root's followed."""
    try:
        fds, real = walk(path, create=0o700)
    except Refused as e:
        raise Refused("DATA_DIR=%s: %s (it is on DATA_DIR's way)" % (path, e))
    close_all(fds)
    write_all(1, (real + "\n").encode())


def can_reach(path, fd):
    """As the service user: b"w" if it may write and enter path, b"x" if it may enter fd's
    directory (/proc/self/fd: that very directory), else b""."""
    if path and os.access(path, os.W_OK | os.X_OK):
        return b"w"
    return b"x" if fd is not None and os.access("/proc/self/fd/%d" % fd, os.X_OK) else b""


def own_data_dir(path, user):
    """As root, with run.sh's lock on DATA_DIR (fd 9): DATA_DIR 0700 with run/, logs/ and nginx/,
    all in it given to user (root's own links there, e.g. logs elsewhere: their targets too), and
    user given search permission (an ACL) on the directories above it closed to it. Through
    directory file descriptors only: a directory on its way swapped for a link cannot redirect it."""
    try:
        fds, real = walk(path)
    except Refused as e:
        raise Refused("DATA_DIR=%s: %s (it is on DATA_DIR's way)" % (path, e))
    try:
        held, now = os.fstat(9), os.fstat(fds[-1])
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            raise Refused("DATA_DIR=%s was replaced while run.sh started; start again" % path)
        if user != "root":  # before root changes anything in it
            adopt(now, pwd.getpwnam(user).pw_uid, real)
        os.fchmod(fds[-1], 0o700)
        for sub in ("run", "logs", "nginx"):
            try:
                os.mkdir(sub, 0o700, dir_fd=fds[-1])
            except FileExistsError:
                pass
        if user == "root":
            return
        pw = pwd.getpwnam(user)
        chown_tree(fds[-1], pw.pw_uid, pw.pw_gid, real)
        for sub in ("run", "logs", "nginx"):
            lfd = os.open(sub, O_LINK, dir_fd=fds[-1])
            try:
                st = os.fstat(lfd)
                if not stat.S_ISLNK(st.st_mode) or st.st_uid != 0:
                    continue
                target = os.path.join(real, os.readlink("", dir_fd=lfd))
            finally:
                os.close(lfd)
            try:
                tfds, treal = walk(target)
            except Refused as e:
                raise Refused("%s/%s leads to %s: %s" % (real, sub, target, e))
            try:
                chown_tree(tfds[-1], pw.pw_uid, pw.pw_gid, treal)
            finally:
                close_all(tfds)
        owner = Owner(user)
        if owner.try_call(can_reach, real, None) == b"w":
            return
        parts = real.split("/")[1:]
        for k in range(len(fds) - 2, -1, -1):  # the directories above it, nearest first
            where = "/" + "/".join(parts[:k])
            if owner.try_call(can_reach, None, fds[k]) == b"x":
                continue
            # the mask as it is (the group bits) plus x: setfacl -m alone recalculates it,
            # which gave a group entry the mask had narrowed (e.g. g:adm:rwx, mask r-x) all of it
            mask = (os.fstat(fds[k]).st_mode >> 3) & 0o7 | 0o1
            spec = "u:%s:--x,m::%s" % (user, "".join(c if mask & b else "-" for c, b in
                                                      (("r", 4), ("w", 2), ("x", 1))))
            try:
                granted = subprocess.run(["setfacl", "-n", "-m", spec,
                                          "/proc/self/fd/%d" % fds[k]], pass_fds=(fds[k],),
                                         stderr=subprocess.DEVNULL).returncode == 0
            except OSError:
                granted = False
            if granted:
                print("run.sh: granted %s search permission (ACL u:%s:--x) on %s so it can reach "
                      "DATA_DIR" % (user, user, where), file=sys.stderr)
    finally:
        close_all(fds)


def temp_dir(path, user):
    """NGINX_TEMP_DIR made if missing (the directories on its way 0755, root's, so that nginx's
    workers can pass) and given to user, mode 0700, through directory file descriptors."""
    try:
        fds, _ = walk(path, create=0o700, last_link_ok=False)
    except Refused as e:
        raise Refused("NGINX_TEMP_DIR=%s: %s" % (path, e))
    try:
        os.fchmod(fds[-1], 0o700)
        if user != "root":
            # All of it, as DATA_DIR's tree: nothing in it may be another user's (who could keep
            # a directory of nginx's temp files open).
            pw = pwd.getpwnam(user)
            chown_tree(fds[-1], pw.pw_uid, pw.pw_gid, "NGINX_TEMP_DIR=" + path)
    finally:
        close_all(fds)


ROOT_COMMANDS = {"root-file": (root_file, 2), "data-dir": (data_dir, 1),
                 "own-data-dir": (own_data_dir, 2), "temp-dir": (temp_dir, 2)}


class Owner:
    """Runs functions and commands as the owner of DATA_DIR: the service user when started as
    root (so root never writes or reads through a link the service user planted), else as is."""

    def __init__(self, user):
        self.user = user or None
        self.prefix = []
        if self.user:
            pw = pwd.getpwnam(self.user)
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            self.prefix = ["setpriv", "--reuid=%d" % self.uid, "--regid=%d" % self.gid,
                           "--clear-groups"]

    def drop(self):
        """This process becomes the owner (for good)."""
        if self.user and os.geteuid() == 0:
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)

    def call(self, fn, *args):
        """fn(*args) as the owner; returns what it returned (bytes or None), or raises OSError."""
        if not self.user:
            return fn(*args) or b""
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for sig in OWN_SIGNALS:  # the supervisor's handlers are not this child's
                    signal.signal(sig, signal.SIG_IGN)
                os.close(r)
                self.drop()
                out = fn(*args)
                write_all(w, b"+" + (out or b""))
                code = 0
            except BaseException:
                pass
            os._exit(code)
        os.close(w)
        chunks = []
        while True:
            c = os.read(r, 65536)
            if not c:
                break
            chunks.append(c)
        os.close(r)
        os.waitpid(pid, 0)
        data = b"".join(chunks)
        if not data.startswith(b"+"):
            raise OSError("could not act as %s" % self.user)
        return data[1:]

    def try_call(self, fn, *args):
        try:
            return self.call(fn, *args)
        except OSError:
            return None


def default_signals():
    """In a child before exec: the signals the supervisor handles or ignores at their defaults
    (ignored signals would survive exec)."""
    for sig in OWN_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)


class Child:
    """One supervised process: a node, nginx or the forwarder."""

    def __init__(self, name, label=""):
        self.name, self.label = name, label
        self.proc = None
        self.state = "down"  # down, starting, ready, backoff
        self.started = self.due = 0.0
        self.quick = self.restarts = self.starts = 0
        self.helper = None  # the append/redact process its stderr goes through
        self.last_pid = None
        self.termed = None  # the process a stop signalled

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def poll(self):
        """The exit status once it has exited (the process is then forgotten), else None."""
        if self.helper:
            self.helper.poll()  # reaped once it is done
        if self.proc is None or self.proc.poll() is None:
            return None
        rc = status_of(self.proc.returncode)
        self.proc, self.state = None, "down"
        return rc

    def signal(self, sig):
        if self.proc:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass


class Supervisor:
    def __init__(self, env):
        self.env = env
        self.data = env["DATA_DIR"]
        self.log = os.path.join(self.data, "logs", "app.log")
        self.owner = Owner(env.get("TDAPI_OWNER"))
        self.nodes = []
        count = int(env.get("APP_NODES", "1"))
        for k in range(1, count + 1):
            node = Child(str(k), "" if count == 1 else "node %d: " % k)
            node.sock = os.path.join(self.data, "run", "app.sock" if count == 1 else "app-%d.sock" % k)
            self.nodes.append(node)
        self.nginx = Child("nginx")
        self.forwarder = Child("forwarder")
        self.start_timeout = int(env.get("START_TIMEOUT", "600"))
        self.stop_timeout = int(env.get("STOP_TIMEOUT_MS", "10000")) / 1000
        self.stopping = False
        self.tty = os.isatty(2)
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.reopen())
        for sig in (signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)

    # -- output ----------------------------------------------------------------------------
    def say(self, text):
        try:
            write_all(2, (text.rstrip("\n") + "\n").encode(errors="replace"))
        except OSError:
            pass  # a full disk under stderr

    def log_json(self, level, event, detail):
        """A line of the supervisor's own, JSON like the app's, into app.log (and to stderr
        unless the log is shown there anyway)."""
        line = json_line(level, event, detail)
        if self.owner.try_call(append, self.log, line.encode()) is None or not self.tty:
            self.say(line)

    def put_pid_file(self, name, pids):
        path = os.path.join(self.data, "run", name)
        data = "".join("%d\n" % p for p in pids).encode()
        if self.owner.try_call(put_file, path, data) is None:
            self.owner.try_call(remove, path)
            self.say("run.sh: could not write %s (disk full?); it is removed until it can be "
                     "written" % path)

    def last_lines(self, path, n):
        return (self.owner.try_call(tail, path, n) or b"").decode(errors="replace")

    # -- processes -------------------------------------------------------------------------
    def spawn(self, argv, as_owner=False, pdeathsig=True, **kw):
        prefix = list(self.owner.prefix) if as_owner else []
        if pdeathsig:
            prefix = (prefix or ["setpriv"]) + ["--pdeathsig", "TERM"]
        return subprocess.Popen(prefix + argv, process_group=0, preexec_fn=default_signals,
                                stdin=subprocess.DEVNULL, **kw)

    def helper(self, mode, path):
        """An append/redact process as the owner: what a child writes to its stdin lands in path."""
        return subprocess.Popen([sys.executable, HERE, mode, path],  # becomes the owner itself
                                process_group=0, stdin=subprocess.PIPE)

    def launch_node(self, node):
        """Starts the node; one that cannot be started (the binary moved away) is tried again
        after a pause, as a crash is."""
        if self.stopping:  # no restart during a stop
            return
        self.owner.try_call(remove, node.sock)
        node.starts += 1
        env = dict(self.env, TDAPI_NODE=node.name, TDAPI_STARTS=str(node.starts),
                   TDAPI_SUPERVISOR_PID=str(os.getpid()), SOCKET=node.sock)
        env.pop("TDAPI_OWNER", None)
        try:
            node.helper = self.helper("append", self.log)
            try:
                node.proc = self.spawn([self.env["APP_BIN"], "serve", "--env-file", "/dev/null",
                                        "--log-file", self.log], pdeathsig=False, env=env,
                                       stderr=node.helper.stdin)
            finally:
                node.helper.stdin.close()
        except OSError as e:
            node.quick += 1
            delay = max(1, restart_delay(node.quick))
            self.log_json("error", "app_start_failed", "%sthe app could not be started (%s: %s); "
                          "trying again in %d s" % (node.label, self.env["APP_BIN"],
                                                    e.strerror or e, delay))
            node.proc, node.state, node.due = None, "backoff", time.monotonic() + delay
            node.started = time.monotonic()
            return
        node.started, node.state, node.last_pid = time.monotonic(), "starting", node.pid
        if len(self.nodes) == 1:
            self.put_pid_file("app.pid", [node.pid])
        else:  # app-K.pid, and app.pid listing each node's latest pid
            self.put_pid_file("app-%s.pid" % node.name, [node.pid])
            self.put_pid_file("app.pid", [n.last_pid for n in self.nodes if n.last_pid])

    def node_output_written(self, node):
        """Waits (up to 2 s) until what the node wrote to stderr is in app.log."""
        if node.helper:
            try:
                node.helper.wait(2)
            except subprocess.TimeoutExpired:
                pass

    def launch_nginx(self):
        if self.stopping:
            return
        self.owner.try_call(remove, os.path.join(self.data, "run", "nginx-http.sock"))
        caps = ["--inh-caps=+net_bind_service", "--ambient-caps=+net_bind_service"]
        argv = [self.env["NGINX_BIN"], "-p", self.data, "-c", self.env["TDAPI_NGINX_CONF"],
                "-e", "stderr"]
        if self.owner.user:
            argv = caps + argv
        err = os.path.join(self.data, "logs", "nginx-error.log")
        self.owner.try_call(append, err, b"")  # there from the start
        self.nginx.helper = self.helper("redact", err)
        self.nginx.proc = self.spawn(argv, as_owner=True, stderr=self.nginx.helper.stdin)
        self.nginx.helper.stdin.close()
        self.nginx.started, self.nginx.state = time.monotonic(), "ready"

    def launch_forwarder(self):
        pid_file = os.path.join(self.data, "run", "rsyslogd.pid")
        self.owner.try_call(remove, pid_file)
        self.forwarder.proc = self.spawn([self.env["RSYSLOGD_BIN"], "-n", "-f",
                                          self.env["TDAPI_FORWARDER_CONF"], "-i", pid_file],
                                         as_owner=True)
        self.forwarder.started, self.forwarder.state = time.monotonic(), "ready"

    def end_nginx_group(self, pid):
        """nginx's workers outlive a killed master and keep the port: its whole group goes."""
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_nodes(self, nodes=None):
        nodes = [n for n in (nodes or self.nodes) if n.proc]
        for n in nodes:
            n.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout + 5
        for n in nodes:
            try:
                n.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                n.signal(signal.SIGKILL)
                n.proc.wait()
            n.proc, n.state = None, "down"

    def stop_nginx(self):
        proc = self.nginx.proc
        if proc:
            self.nginx.signal(signal.SIGQUIT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            self.end_nginx_group(proc.pid)
            proc.wait()
            self.nginx.proc = None

    def stop_forwarder(self):
        proc = self.forwarder.proc
        if proc:
            time.sleep(1.5)  # the last lines read and sent
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.forwarder.proc = None

    # -- signals ---------------------------------------------------------------------------
    def stop(self):
        self.stopping = True
        for n in self.nodes:
            n.signal(signal.SIGTERM)
            n.termed = n.proc
        self.nginx.signal(signal.SIGQUIT)

    def reopen(self):
        for n in self.nodes:
            n.signal(signal.SIGHUP)
        self.nginx.signal(signal.SIGUSR1)
        self.forwarder.signal(signal.SIGHUP)

    def sleep(self, seconds):
        """Until a signal (a child's exit included) or `seconds` pass."""
        try:
            select.select([self.wake_r], [], [], seconds)
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- the phases ------------------------------------------------------------------------
    def start_forwarder(self):
        self.launch_forwarder()
        pid_file = os.path.join(self.data, "run", "rsyslogd.pid")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.forwarder.proc.poll() is None:
            written = self.owner.try_call(tail, pid_file, 1) or b""
            if written.strip() == str(self.forwarder.pid).encode():
                env = self.env
                self.log_json("info", "log_forwarding",
                              "app and access logs forwarded to %s (%s, RFC 5424) by rsyslogd "
                              "(queue in %s/rsyslog/queue, at most %s)"
                              % (env["LOG_FORWARD"], env["LOG_FORWARD"].split(":")[0], self.data,
                                 env.get("LOG_FORWARD_QUEUE_MAX", "")))
                return True
            time.sleep(0.05)
        self.stop_forwarder()
        self.say("run.sh: LOG_FORWARD: the log forwarder (rsyslogd) did not start; its messages "
                 "are above")
        return False

    def start_nodes(self):
        """Every node ready (its socket exists) within START_TIMEOUT; returns the exit status
        to end with, or None."""
        for n in self.nodes:
            self.launch_node(n)
        while True:
            if self.stopping:
                self.stop_nodes()
                return 0
            for n in self.nodes:
                if os.path.lexists(n.sock):
                    n.state = "ready"
                    continue
                rc = 1 if n.proc is None else n.poll()  # (None: it could not be started)
                if rc is None and not self.timed_out(n):
                    continue
                if rc is None:
                    self.log_json("error", "start_timeout", "%sthe app was not ready within "
                                  "START_TIMEOUT=%ds; stopping it" % (n.label, self.start_timeout))
                    self.stop_nodes([n])
                self.node_output_written(n)
                last = self.last_lines(self.log, 1)  # before the other nodes' stop lines
                self.stop_nodes()
                self.say("run.sh: %sthe app did not start; its last log line says why (%s):\n%s"
                         % (n.label, self.log, last))
                return rc if rc else 1
            if all(n.state == "ready" for n in self.nodes):
                return None
            self.sleep(0.05)

    def timed_out(self, node):
        return self.start_timeout and time.monotonic() - node.started >= self.start_timeout

    def node_exited(self, node, rc):
        """Schedules the restart; returns the status to stop everything with, or None."""
        if rc in NOT_RESTARTED:
            self.node_output_written(node)
            self.log_json("error", "app_exited", "%sthe app exited with status %d and is not "
                          "restarted; see the line above" % (node.label, rc))
            return rc
        node.quick = node.quick + 1 if time.monotonic() - node.started < 2 else 0
        self.log_json("warn", "app_restarted", "%sthe app exited with status %d; restarting it"
                      % (node.label, rc))
        node.state, node.due = "backoff", time.monotonic() + restart_delay(node.quick)
        return None

    def nginx_exited(self, pid, rc):
        """Ends the old master's group and schedules a restart; returns the status to stop
        everything with (nginx failing on its own again and again), or None."""
        self.end_nginx_group(pid)
        ng = self.nginx
        if time.monotonic() - ng.started >= 10:
            ng.quick = ng.restarts = 0
        elif 0 < rc < 128:  # failed on its own (a signal, or a stop by one, is not a failure)
            ng.quick += 1
        ng.restarts += 1
        err = os.path.join(self.data, "logs", "nginx-error.log")
        self.say("run.sh: nginx exited (status %d); see %s:\n%s" % (rc, err, self.last_lines(err, 5)))
        if ng.quick >= NGINX_QUICK_MAX:
            self.log_json("error", "nginx_exited", "nginx exited with status %d, %d times in a row "
                          "within 10 s of its start; stopping (see logs/nginx-error.log)"
                          % (rc, ng.quick))
            return 1
        self.log_json("warn", "nginx_restarted", "nginx exited with status %d; restarting it" % rc)
        ng.state, ng.due = "backoff", time.monotonic() + restart_delay(ng.restarts)
        return None

    def forwarder_exited(self, rc):
        fw = self.forwarder
        delay = 0 if time.monotonic() - fw.started >= 2 else 5
        self.log_json("warn", "log_forwarder_restarted", "rsyslogd (LOG_FORWARD) exited with status "
                      "%d; restarting it%s" % (rc, " in %d s" % delay if delay else ""))
        fw.state, fw.due = "backoff", time.monotonic() + delay

    def supervise(self):
        """Until a stop or a fatal exit; returns the exit status."""
        while not self.stopping:
            now, busy = time.monotonic(), False
            nginx_pid = self.nginx.pid
            rc = self.nginx.poll()
            if rc is not None:
                fatal = self.nginx_exited(nginx_pid, rc)
                if fatal is not None:
                    self.stop_nodes()
                    return fatal
            for n in self.nodes:
                rc = n.poll()
                if rc is not None:
                    fatal = self.node_exited(n, rc)
                    if fatal is not None:
                        self.stop_nodes()
                        self.stop_nginx()
                        return fatal
            rc = self.forwarder.poll()
            if rc is not None:
                self.forwarder_exited(rc)
            for child, launch in ((self.nginx, self.launch_nginx),
                                  (self.forwarder, self.launch_forwarder)):
                if child.state == "backoff":
                    busy = True
                    if now >= child.due and not self.stopping:
                        launch()
            for n in self.nodes:
                if n.state == "backoff":
                    busy = True
                    if now >= n.due:
                        self.launch_node(n)
                elif n.state == "starting":
                    if os.path.lexists(n.sock):
                        n.state = "ready"
                    elif self.timed_out(n):
                        self.log_json("error", "start_timeout", "%sthe app was not ready within "
                                      "START_TIMEOUT=%ds; stopping it" % (n.label, self.start_timeout))
                        self.stop_nodes()
                        self.stop_nginx()
                        return 1
                    else:
                        busy = True
            self.sleep(0.05 if busy else 1)
        status = 0
        for n in self.nodes:
            if n.proc and n.termed is not n.proc:  # started as the stop came: it is told too
                n.signal(signal.SIGTERM)
            if n.proc:
                try:
                    n.proc.wait(self.stop_timeout + 5)  # the app bounds its own stop
                except subprocess.TimeoutExpired:
                    n.signal(signal.SIGKILL)
                    n.proc.wait()
                status = status or n.poll()
        self.stop_nginx()
        return status

    def run(self):
        self.put_pid_file("supervisor.pid", [os.getpid()])
        if self.env.get("LOG_FORWARD") and not self.start_forwarder():
            return 78
        env = self.env
        nodes = int(env.get("APP_NODES", "1"))
        note = ""
        if env.get("DATABASE_URL"):
            shown = env.get("DATABASE_URL_SHOWN", "")
            note = ", PostgreSQL %s with %d app node%s" % (shown, nodes, "" if nodes == 1 else "s")
            self.log_json("info", "storage", "PostgreSQL at %s, %d app node(s)" % (shown, nodes))
        status = self.start_nodes()
        if status is None:
            self.launch_nginx()
            if not env.get("TLS_CERT") and env.get("LOOPBACK") == "0":
                self.log_json("warn", "plaintext", "LISTEN=%s without TLS (ALLOW_PLAINTEXT=1): a "
                              "TLS-terminating proxy in front must carry every request" % env["LISTEN"])
            self.say("testdata-api: serving on %s://%s, authorization %s%s (data in %s; Ctrl-C "
                     "stops)" % ("https" if env.get("TLS_CERT") else "http", env["LISTEN"],
                                 env.get("AUTH", ""), note, self.data))
            if self.tty:  # the app's lines as they come
                self.spawn(["tail", "-n", "0", "-F", self.log], as_owner=True,
                           stderr=subprocess.DEVNULL)
            status = self.supervise()
        self.stop_forwarder()
        return status


def put_stdin(path):
    """The `put` helper: path replaced by stdin, whole; 0 also when it already holds that (the
    disk full), else 1."""
    data = sys.stdin.buffer.read()
    try:
        put_file(path, data)
        return 0
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                return 0 if f.read() == data else 1
        except OSError:
            return 1


def main(argv):
    command, n = ROOT_COMMANDS.get(argv[1] if len(argv) > 1 else "", (None, 0))
    if command and len(argv) == 2 + n:
        try:
            command(*argv[2:])
            return 0
        except Refused as e:
            print("run.sh: %s" % e, file=sys.stderr)
        except OSError as e:
            print("run.sh: %s: %s" % (" ".join(argv[2:]), e), file=sys.stderr)
        return 78
    if len(argv) == 3 and argv[1] in ("put", "append", "redact"):
        Owner(os.environ.get("TDAPI_OWNER")).drop()  # (started as root: root can read this file)
    if len(argv) == 3 and argv[1] == "put":
        return put_stdin(argv[2])
    if len(argv) == 3 and argv[1] in ("append", "redact"):
        copy_lines(argv[2], (lambda line: redact(line) + b"\n") if argv[1] == "redact"
                   else lambda line: line)
        return 0
    if len(argv) != 2 or argv[1] != "serve":
        print(__doc__, file=sys.stderr)
        return 2
    sup = Supervisor(dict(os.environ))
    try:
        return sup.run()
    finally:
        cleanup = os.environ.get("TDAPI_CLEANUP_DIR")
        if cleanup:
            subprocess.run(["rm", "-rf", "--", cleanup], check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
