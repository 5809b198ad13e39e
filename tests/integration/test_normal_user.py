#!/usr/bin/env python3
"""test_normal_user.py: the service as a normal (non-root) user: nginx's workers run as that
user, reach the app's 0600 socket, and serve. Run as root (CI), the test drops to `nobody`
with a copy of the binary and scripts in a directory that user can read; run as a normal user,
it runs as itself."""

import os
import shutil
import stat
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_BIN, ROOT, Server, record  # noqa: E402


def processes_of(uid):
    """Command lines of the processes whose real uid is uid (read from /proc)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as f:
                real_uid = next(int(l.split()[1]) for l in f if l.startswith("Uid:"))
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, StopIteration):
            continue
        if real_uid == uid:
            out.append(cmd)
    return "\n".join(out)


class NormalUser(unittest.TestCase):
    def test_serves_as_a_normal_user(self):
        top = tempfile.mkdtemp(prefix="tdapi-user-")
        try:
            project = os.path.join(top, "project")
            os.makedirs(os.path.join(project, "scripts"))
            os.makedirs(os.path.join(project, "docs"))
            shutil.copy(os.path.join(ROOT, "nginx.conf"), project)
            for name in ("run.sh", "dev_supervisor.py"):  # the launcher and its supervisor
                shutil.copy(os.path.join(ROOT, "scripts", name), os.path.join(project, "scripts"))
            os.makedirs(os.path.join(project, "ops"))  # run.sh renders its configs with it
            shutil.copy(os.path.join(ROOT, "ops", "render-config.py"), os.path.join(project, "ops"))
            shutil.copy(os.path.join(ROOT, "docs", "openapi.yaml"), os.path.join(project, "docs"))
            shutil.copy(APP_BIN, os.path.join(project, "testdata-api"))
            data = os.path.join(top, "data")
            os.mkdir(data)
            env = {"APP_BIN": os.path.join(project, "testdata-api")}
            if os.geteuid() == 0:
                for d, _, files in os.walk(top):
                    os.chown(d, 65534, 65534)
                    for f in files:
                        os.chown(os.path.join(d, f), 65534, 65534)
                os.chmod(top, 0o755)
                wrapper = os.path.join(top, "run-as-nobody.sh")
                with open(wrapper, "w") as f:
                    f.write("#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups "
                            f"--reset-env env PATH=/usr/sbin:/usr/bin:/sbin:/bin PORT=\"$PORT\" "
                            f"DATA_DIR=\"$DATA_DIR\" APP_BIN=\"$APP_BIN\" "
                            # on PostgreSQL (harness), the database goes through too
                            f"${{DATABASE_URL:+\"DATABASE_URL=$DATABASE_URL\"}} "
                            f"{project}/scripts/run.sh\n")
                os.chmod(wrapper, 0o755)
                env["RUN_SCRIPT"] = wrapper
            s = Server(data_dir=data, **env)
            s.start()
            try:
                self.assertEqual(s.request("POST", "/tests", record("nu-1", clinic="nu")).status, 201)
                r = s.request("GET", "/tests?clinic_id=nu")
                self.assertEqual((r.status, r.json()["count"]), (200, 1))
                self.assertEqual(s.request("GET", "/openapi.yaml").status, 200)
                sock = os.stat(os.path.join(data, "run", "app.sock"))
                self.assertEqual(stat.S_IMODE(sock.st_mode), 0o600)
                self.assertIn("nginx: worker process", processes_of(sock.st_uid))
                if os.geteuid() == 0:
                    self.assertEqual(sock.st_uid, 65534)
            finally:
                self.assertEqual(s.stop(), 0, s.run_output()[-2000:])
                s.output.close()
        finally:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
