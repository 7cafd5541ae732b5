#!/usr/bin/env python3
"""Write an OCI image archive (oci-layout tar, one layer) without Docker or a
registry: what `docker build` with the repository's Dockerfile would produce
on distroless/cc, from a binary built here.

The image's user, exposed ports, entrypoint and command are read from the
final stage of the Dockerfile, so the two cannot describe different images
(`e2e/tests/images.rs` checks it). The filesystem is the binary, the shared
libraries `ldd` says it loads (at the same paths), CA certificates,
/etc/passwd and /etc/group with root and nonroot (65532), and an empty /tmp;
no shell. Every timestamp is SOURCE_DATE_EPOCH (default 0), files are
sorted and owned by root, gzip carries no name or time: the same inputs give
the same digest.

usage: image.py --dockerfile runner/Dockerfile --binary target/debug/vigil \\
                --name vigil-runner --tag dev --out DIR/vigil-runner.tar
       image.py --binary pause --install-path /pause --entrypoint '["/pause"]' \\
                --user 65535:65535 --name pause --tag 1 --out DIR/pause.tar
                (no Dockerfile: the harness's pod sandbox image)
Prints the archive path, the image reference and the manifest digest.
"""
import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile

NONROOT = 65532


def dockerfile_final_stage(path):
    """USER, EXPOSE, ENTRYPOINT, CMD and the COPY destination of the binary,
    from the last FROM onwards."""
    lines, cur = [], ""
    for raw in open(path, encoding="utf-8"):
        line = raw.rstrip("\n")
        if line.strip().startswith("#"):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip():
            lines.append(cur.strip())
        cur = ""
    last_from = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    stage = {"user": None, "expose": [], "entrypoint": None, "cmd": None, "copy_to": None, "from": lines[last_from][5:].strip()}
    for l in lines[last_from + 1:]:
        word, _, rest = l.partition(" ")
        word = word.upper()
        rest = rest.strip()
        if word == "USER":
            stage["user"] = rest
        elif word == "EXPOSE":
            stage["expose"] += rest.split()
        elif word in ("ENTRYPOINT", "CMD"):
            stage[word.lower()] = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            stage["copy_to"] = parts[-1]
    missing = [k for k in ("user", "entrypoint", "copy_to") if not stage[k]]
    if missing:
        sys.exit(f"{path}: the final stage has no {', '.join(missing)}")
    return stage


def shared_libraries(binary):
    """Paths of the shared objects the binary loads (resolved), with the path
    the loader asks for, e.g. ('/lib/x86_64-linux-gnu/libssl.so.3', real)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        sys.exit(f"ldd {binary} failed: {out.stderr.strip()}")
    libs = []
    for line in out.stdout.splitlines():
        line = line.strip()
        m = re.match(r"\S+ => (/\S+) \(0x", line) or re.match(r"(/\S+) \(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


class Layer:
    """A reproducible tar: entries sorted, root-owned, fixed mtime."""

    def __init__(self, mtime):
        self.mtime = mtime
        self.entries = {}  # path -> (TarInfo, bytes or None)

    def _info(self, path, type_, mode, size=0):
        ti = tarfile.TarInfo(path.lstrip("/"))
        ti.type, ti.mode, ti.size = type_, mode, size
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = self.mtime
        return ti

    def dir(self, path, mode=0o755):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.entries:
                self.entries[p] = (self._info(p, tarfile.DIRTYPE, mode if i == len(parts) else 0o755), None)

    def file(self, path, data, mode=0o644):
        self.dir(os.path.dirname(path))
        self.entries[path.lstrip("/")] = (self._info(path, tarfile.REGTYPE, mode, len(data)), data)

    def tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            for path in sorted(self.entries):
                ti, data = self.entries[path]
                t.addfile(ti, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dockerfile", help="read user, ports, entrypoint, command and install path from it")
    ap.add_argument("--install-path", help="without --dockerfile: where the binary goes")
    ap.add_argument("--entrypoint", help="without --dockerfile: a JSON list")
    ap.add_argument("--user", help="without --dockerfile")
    ap.add_argument("--binary", required=True)
    ap.add_argument("--name", required=True, help="image name, e.g. vigil-runner")
    ap.add_argument("--tag", default="dev")
    ap.add_argument("--registry", default="registry.local/vigil")
    ap.add_argument("--version", default="0.0.0")
    ap.add_argument("--description", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if a.dockerfile:
        stage = dockerfile_final_stage(a.dockerfile)
    elif a.install_path and a.entrypoint and a.user:
        stage = {"user": a.user, "expose": [], "entrypoint": json.loads(a.entrypoint), "cmd": None,
                 "copy_to": a.install_path, "from": "scratch"}
    else:
        sys.exit("give --dockerfile, or --install-path, --entrypoint and --user")

    layer = Layer(epoch)
    layer.file(stage["copy_to"], open(a.binary, "rb").read(), 0o755)
    for lib in shared_libraries(a.binary):
        layer.file(lib, open(os.path.realpath(lib), "rb").read(), 0o755)
    layer.file("/etc/passwd", (f"root:x:0:0:root:/root:/sbin/nologin\n"
                               f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n").encode())
    layer.file("/etc/group", f"root:x:0:\nnonroot:x:{NONROOT}:\n".encode())
    layer.file("/etc/ssl/certs/ca-certificates.crt", open("/etc/ssl/certs/ca-certificates.crt", "rb").read())
    layer.dir("/home/nonroot", 0o700)
    layer.dir("/tmp", 0o1777)
    raw = layer.tar()

    blobs = {}

    def add(data):
        d = hashlib.sha256(data).hexdigest()
        blobs[d] = data
        return "sha256:" + d, len(data)

    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    gz = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0) as g:
        g.write(raw)
    layer_digest, layer_size = add(gz.getvalue())
    labels = {
        "org.opencontainers.image.title": a.name,
        "org.opencontainers.image.description": a.description,
        "org.opencontainers.image.version": a.version,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.source": "https://github.com/vigil-dev/vigil",
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.base.name": stage["from"],
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": stage["user"],
            "ExposedPorts": {(p if "/" in p else p + "/tcp"): {} for p in stage["expose"]},
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "Entrypoint": stage["entrypoint"],
            "Cmd": stage["cmd"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": f"e2e/lib/image.py from {a.dockerfile or 'its arguments'}"}],
    }
    config_digest, config_size = add(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer_size}],
        "annotations": {"org.opencontainers.image.created": created},
    }
    manifest_digest, manifest_size = add(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    ref = f"{a.registry}/{a.name}:{a.tag}"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": a.tag},
        }],
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
        def put(name, data):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, epoch
            t.addfile(ti, io.BytesIO(data))
        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put("index.json", json.dumps(index, sort_keys=True).encode())
        for d in sorted(blobs):
            put("blobs/sha256/" + d, blobs[d])
    os.replace(tmp, a.out)
    print(a.out, ref, manifest_digest)


if __name__ == "__main__":
    main()
