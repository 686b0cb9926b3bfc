"""A small Hugging Face Hub-compatible HTTP server for tests (the calls in
../shared/notes/hub-http-api.md): repos, preupload, LFS batch upload, ndjson commits, tags,
refs, revision info, tree listing and file resolve, for model and dataset repos. State lives in
memory: `repos["ns/name"]` for a model, `repos["datasets/ns/name"]` for a dataset.

As the Hub does: a commit whose `parentCommit` is no longer the head of main gets 412; an existing
tag or repo 409. `HubServer(token=...)` checks `Authorization: Bearer <token>`; `fail_uploads = N`
makes the next N LFS uploads drop the connection, as a server dying mid-push would (the client
retries those), `fail_commits = N` the next N commits once their body is read (not retried); `outage =
(status, retry_after)` answers every request so (503, 429 with Retry-After) until set to None.
"""
import base64
import hashlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class Repo:
    def __init__(self):
        self.commits: list[dict] = []          # each {oid, title, message, date, files: {path: (bytes, lfs_oid|None)}}
        self.tags: dict[str, str] = {}
        self.private = False

    def head(self) -> dict | None:
        return self.commits[-1] if self.commits else None

    def resolve(self, rev: str) -> dict | None:
        if rev == "main":
            return self.head()
        if rev in self.tags:
            rev = self.tags[rev]
        return next((c for c in self.commits if c["oid"] == rev), None)


class HubServer:
    def __init__(self, token: str = "test-token", host: str = "127.0.0.1", port: int = 0):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.fail_uploads = 0
        self.fail_commits = 0
        self.commit_received = threading.Event()  # set by each commit request, as it arrives
        self.commit_delay_s = 0.0                  # a slow Hub: each commit answers after this long
        self.outage: tuple[int, int] | None = None
        self.requests: list[tuple[str, str, dict]] = []
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> "HubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        # --- plumbing --------------------------------------------------------------------
        def _body(self) -> bytes:
            """The request's body, read once (a second read would wait for bytes that never come)."""
            if getattr(self, "_read", None) is None or self._read[0] is not self.headers:
                length = int(self.headers.get("Content-Length") or 0)
                self._read = (self.headers, self.rfile.read(length) if length else b"")
            return self._read[1]

        def _send(self, status: int, payload=None, headers=None, raw: bytes | None = None, head=False):
            body = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
            self.send_response(status)
            ctype = "application/json" if raw is None else "application/octet-stream"
            for key, value in (headers or {}).items():
                if key.lower() == "content-type":
                    ctype = value
                else:
                    self.send_header(key, value)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, code: str, message: str, head=False):
            self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            return False

        def _down(self, head=False) -> bool:
            """During an outage every request gets its status (and Retry-After), nothing else."""
            if hub.outage is None:
                return False
            status, retry_after = hub.outage
            self._body()
            self._send(status, {"error": "unavailable"}, {"Retry-After": str(retry_after)}, head=head)
            return True

        def _repo(self, ns: str, name: str, head=False, kind: str = "models") -> Repo | None:
            repo = hub.repos.get(f"{ns}/{name}" if kind == "models" else f"datasets/{ns}/{name}")
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found", head=head)
            return repo

        # --- routes ----------------------------------------------------------------------
        def do_POST(self):
            path = urlparse(self.path).path
            body = self._body()
            hub.requests.append(("POST", path, dict(self.headers)))
            if self._down() or not self._authorized():
                return
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if path == "/api/repos/create":
                spec = json.loads(body)
                repo_id = f"{spec.get('organization') or 'user'}/{spec['name']}"
                key = repo_id if spec.get("type", "model") == "model" else f"datasets/{repo_id}"
                url = f"{hub.url}/{key}"
                if key in hub.repos:
                    return self._send(409, {"error": "exists", "url": url})
                hub.repos[key] = Repo()
                hub.repos[key].private = spec.get("visibility") == "private" or bool(spec.get("private"))
                return self._send(200, {"url": url})
            if path == "/api/validate-yaml":
                return self._send(200, {})
            if len(parts) >= 5 and parts[0] == "api" and parts[1] in ("models", "datasets"):
                repo = self._repo(parts[2], parts[3], kind=parts[1])
                if repo is None:
                    return
                action, rev = parts[4], "/".join(parts[5:])
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [
                        {"path": f["path"], "uploadMode": _mode(f), "shouldIgnore": False} for f in files]})
                if action == "commit":
                    if hub.fail_commits > 0:
                        hub.fail_commits -= 1
                        return self._die()
                    return self._commit(repo, f"{parts[2]}/{parts[3]}", body)
                if action == "tag":
                    spec = json.loads(body)
                    commit = repo.resolve(rev)
                    if commit is None:
                        return self._error(404, "RevisionNotFound", "Revision not found")
                    if spec["tag"] in repo.tags:
                        return self._error(409, "Conflict", "Tag already exists")
                    repo.tags[spec["tag"]] = commit["oid"]
                    return self._send(200, {})
            if path.endswith(".git/info/lfs/objects/batch"):
                request = json.loads(body)
                objects = []
                for obj in request["objects"]:
                    entry = {"oid": obj["oid"], "size": obj["size"]}
                    if obj["oid"] not in hub.lfs:
                        entry["actions"] = {
                            "upload": {"href": f"{hub.url}/lfs-upload/{obj['oid']}"},
                            "verify": {"href": f"{hub.url}/lfs-verify/{obj['oid']}"}}
                    objects.append(entry)
                return self._send(200, {"transfer": "basic", "objects": objects},
                                  {"Content-Type": "application/vnd.git-lfs+json"})
            if parts[0] == "lfs-verify":
                return self._send(200, {}) if parts[1] in hub.lfs else self._error(404, "EntryNotFound", "no object")
            self._error(404, "NotFound", f"no route POST {path}")

        def do_PUT(self):
            path = urlparse(self.path).path
            hub.requests.append(("PUT", path, dict(self.headers)))
            if self._down():
                return
            if path.startswith("/lfs-upload/"):
                if hub.fail_uploads > 0:
                    hub.fail_uploads -= 1
                    return self._die()
                data = self._body()
                oid = path.rsplit("/", 1)[1]
                if hashlib.sha256(data).hexdigest() != oid:
                    return self._error(400, "BadRequest", "sha256 mismatch")
                hub.lfs[oid] = data
                return self._send(200, {})
            self._error(404, "NotFound", f"no route PUT {path}")

        def _die(self) -> None:
            """The server "dies" on this request: the connection drops, no answer at all."""
            self.close_connection = True
            self.connection.close()

        def _commit(self, repo: Repo, repo_id: str, body: bytes):
            hub.commit_received.set()
            time.sleep(hub.commit_delay_s)
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(entry["value"] for entry in lines if entry["key"] == "header")
            parent = header.get("parentCommit")
            if parent and parent != (repo.head() or {}).get("oid"):  # someone committed since the writer read main
                return self._error(412, "PreconditionFailed", "A commit has happened since. Please refresh and try again.")
            files = dict(repo.head()["files"]) if repo.head() else {}
            for line in lines:
                value = line["value"]
                if line["key"] == "file":
                    files[value["path"]] = (base64.b64decode(value["content"]), None)
                elif line["key"] == "lfsFile":
                    if value["oid"] not in hub.lfs:
                        return self._error(400, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = (hub.lfs[value["oid"]], value["oid"])
                elif line["key"] in ("deletedFile", "deletedFolder"):
                    folder = value["path"].rstrip("/") + "/"
                    files = {p: f for p, f in files.items() if p != value["path"] and not p.startswith(folder)}
            oid = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
            repo.commits.append({"oid": oid, "title": header.get("summary", ""), "message": header.get("description", ""),
                                 "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "files": files})
            return self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid})

        def do_HEAD(self):
            self._get(head=True)

        def do_GET(self):
            self._get(head=False)

        def _get(self, head: bool):
            path = urlparse(self.path).path
            hub.requests.append(("HEAD" if head else "GET", path, dict(self.headers)))
            if self._down(head):
                return
            if self.headers.get("Authorization") not in (None, f"Bearer {hub.token}"):
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header", head=head)
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if len(parts) == 4 and parts[0] == "api" and parts[1] in ("models", "datasets"):  # repo_info
                parts.extend(["revision", "main"])
            if len(parts) >= 5 and parts[0] == "api" and parts[1] in ("models", "datasets"):
                repo = self._repo(parts[2], parts[3], head, kind=parts[1])
                if repo is None:
                    return
                action, rev = parts[4], "/".join(parts[5:])
                under = ""
                if action in ("tree", "paths-info") and len(parts) > 6:  # tree/{rev}/{path}
                    rev, under = parts[5], "/".join(parts[6:]).rstrip("/") + "/"
                if action == "refs":
                    last = repo.head()
                    branches = [{"name": "main", "ref": "refs/heads/main", "targetCommit": last["oid"]}] if last else []
                    tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in repo.tags.items()]
                    return self._send(200, {"branches": branches, "tags": tags, "converts": []}, head=head)
                commit = repo.resolve(rev or "main")
                if commit is None:
                    return self._error(404, "RevisionNotFound", "Revision not found", head=head)
                if action == "commits":
                    history = repo.commits[:repo.commits.index(commit) + 1][::-1]
                    return self._send(200, [{"id": c["oid"], "title": c["title"], "message": c["message"],
                                             "date": c["date"], "authors": [{"user": "test"}]} for c in history], head=head)
                if action == "revision":
                    return self._send(200, {"id": f"{parts[2]}/{parts[3]}", "sha": commit["oid"], "private": repo.private,
                                            "siblings": [{"rfilename": p} for p in sorted(commit["files"])]}, head=head)
                if action == "tree":
                    return self._send(200, [{"type": "file", "path": p, "size": len(d),
                                             "oid": hashlib.sha1(d).hexdigest(),
                                             **({"lfs": {"oid": lfs, "size": len(d), "pointerSize": 134}} if lfs else {})}
                                            for p, (d, lfs) in sorted(commit["files"].items()) if p.startswith(under)],
                                      head=head)
            kind = "datasets" if parts and parts[0] == "datasets" else "models"
            if kind == "datasets":
                parts = parts[1:]
            if len(parts) >= 4 and parts[2] == "resolve":
                repo = self._repo(parts[0], parts[1], head, kind=kind)
                if repo is None:
                    return
                commit = repo.resolve(parts[3])
                if commit is None:
                    return self._error(404, "RevisionNotFound", "Revision not found", head=head)
                file_path = "/".join(parts[4:])
                if file_path not in commit["files"]:
                    return self._error(404, "EntryNotFound", "Entry not found", head=head)
                data, lfs_oid = commit["files"][file_path]
                etag = lfs_oid or hashlib.sha1(data).hexdigest()
                headers = {"X-Repo-Commit": commit["oid"], "ETag": f'"{etag}"'}
                if lfs_oid:
                    headers.update({"X-Linked-Etag": f'"{lfs_oid}"', "X-Linked-Size": str(len(data))})
                return self._send(200, raw=data, headers=headers, head=head)
            self._error(404, "NotFound", f"no route GET {path}", head=head)

    return Handler


def _mode(spec: dict) -> str:
    sample = base64.b64decode(spec.get("sample", ""))
    binary = b"\x00" in sample
    return "lfs" if binary or spec.get("size", 0) >= 10_000_000 else "regular"
