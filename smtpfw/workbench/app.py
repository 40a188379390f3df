"""The workbench's web application (aiohttp): the page, its static files
and a JSON API.  Work that takes CPU (lint, tests, trace, compiling) runs in
a thread pool, a dry-run in a thread of its own: the page never waits on
the event loop.

    GET  /                       the page (static/index.html)
    GET  /static/NAME            the bundled script (CodeMirror 6 and the page's code), its CSS
    GET  /api/state              the ruleset, its files, the saved version, the recordings, the server
    GET  /api/file?name=NAME     one file's text
    POST /api/files              the ruleset's files as the edited text names them
    POST /api/lint               diagnostics of the edited text (smtpfw lint)
    POST /api/tests              the ruleset's tests on the edited text (smtpfw test)
    POST /api/test-line          a test line for a session (its expectation: what the edited rules decide)
    POST /api/trace              a session traced (smtpfw trace)
    GET  /api/sessions           the last recorded sessions
    POST /api/dryrun             start a dry-run diff, saved vs edited
    GET  /api/dryrun/ID          its progress, then its report
    POST /api/dryrun/ID/cancel
    POST /api/preview            what save would write: a diff per file, whether it compiles
    POST /api/save               write the files (only a ruleset that compiles)
    POST /api/reload             SIGHUP the server
    GET  /api/reload             whether it took the new version

Every POST carries ``{"files": {NAME: TEXT}}``: the edited files, the
rest is read from disk.
"""

from __future__ import annotations

import asyncio
import collections
import difflib
import functools
import os
import socket
import threading
from importlib import resources

from aiohttp import web

from smtpfw.commands.errors import CommandError, RulesetError
from smtpfw.lang.compiler import compile_ruleset
from smtpfw.recording import RecordError
from smtpfw.replay.records import iter_records, session_files
from smtpfw.workbench import bridge, security
from smtpfw.workbench.files import PathRefused, Shadow, Workspace, digest, shadow
from smtpfw.workbench.jobs import DryRuns
from smtpfw.workbench.reload import Reloader, ReloadError

STATIC = {"app.js": "application/javascript", "app.css": "text/css"}
MAX_BODY = 16 * 1024 * 1024
RECENT_SESSIONS = 200


class Workbench:
    def __init__(self, settings: bridge.Settings):
        self.settings = settings
        self.ws = Workspace.open(settings.rules)
        self.dryruns = DryRuns()
        self.reloader = Reloader(settings.pid_file, settings.server_log)
        self._saving = threading.Lock()

    # -- helpers
    async def _run(self, fn, *args, **kw):
        return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kw))

    async def _body(self, request: web.Request) -> tuple[dict, dict[str, str]]:
        try:
            body = await request.json()
        except ValueError:
            raise _error(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise _error(400, "the body is a JSON object")
        try:
            return body, self.ws.check_edits(body.get("files") or {})
        except PathRefused as err:
            raise _error(400, str(err)) from None

    def _diag(self, d, sh: Shadow) -> dict:
        return bridge._diagnostic_json(d, self.ws, sh, {})

    # -- the page
    async def index(self, request: web.Request) -> web.Response:
        html = resources.files("smtpfw.workbench").joinpath("static", "index.html").read_text(encoding="utf-8")
        return web.Response(text=html, content_type="text/html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise _error(404, "no such file")
        data = resources.files("smtpfw.workbench").joinpath("static", name).read_bytes()
        return web.Response(body=data, content_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    # -- files
    async def state(self, request: web.Request) -> web.Response:
        files = await self._run(bridge.ruleset_files, self.ws, {})
        version = await self._run(_saved_version, self.ws)
        return web.json_response({
            "rules": self.ws.rules, "root": self.ws.root, "rules_name": self.ws.rules_name,
            "tests_name": self.ws.tests_name, "files": files, "saved_version": version,
            "recordings": self.settings.recordings, "server": self.reloader.describe()})

    async def file(self, request: web.Request) -> web.Response:
        name = request.query.get("name", "")
        try:
            text = await self._run(self.ws.read, name)
        except PathRefused as err:
            raise _error(400, str(err)) from None
        return web.json_response({"name": name, "text": text, "digest": digest(text)})

    async def files(self, request: web.Request) -> web.Response:
        _body, edits = await self._body(request)
        return web.json_response({"files": await self._run(bridge.ruleset_files, self.ws, edits)})

    # -- lint, tests, trace
    async def lint(self, request: web.Request) -> web.Response:
        _body, edits = await self._body(request)
        return web.json_response(await self._run(bridge.lint, self.ws, edits, self.settings))

    async def tests(self, request: web.Request) -> web.Response:
        _body, edits = await self._body(request)
        return web.json_response(await self._run(bridge.tests, self.ws, edits))

    async def test_line(self, request: web.Request) -> web.Response:
        body, edits = await self._body(request)
        try:
            if body.get("session_id"):
                record = await self._run(bridge.find_session, self.settings, str(body["session_id"]))
            else:
                record = bridge.spec_of_form(body.get("form") or {}).record()
            return web.json_response(await self._run(bridge.test_line, self.ws, edits, record))
        except RulesetError:
            raise _error(422, "the edited ruleset has errors: see the editor") from None
        except CommandError as err:
            raise _error(400, "; ".join(err.problems)) from None

    async def trace(self, request: web.Request) -> web.Response:
        body, edits = await self._body(request)
        which = body.get("which", "edited")
        if which not in ("edited", "saved"):
            raise _error(400, "`which` is edited or saved")
        dns = body.get("dns", "default")
        if dns not in ("default", "live", "none"):
            raise _error(400, "`dns` is default, live or none")
        session_id = body.get("session_id")
        try:
            result = await self._run(bridge.trace, self.ws, edits, self.settings,
                                     form=body.get("form"), session_id=str(session_id) if session_id else None,
                                     which=which, dns=dns)
        except RulesetError as err:
            raise _error(422, f"the {which} ruleset has errors: see the editor",
                         diagnostics=[d.to_json() for d in err.diags]) from None
        except CommandError as err:
            raise _error(400, "; ".join(err.problems)) from None
        return web.json_response(result)

    async def sessions(self, request: web.Request) -> web.Response:
        if not self.settings.recordings:
            return web.json_response({"sessions": [], "error": "no recordings: start with --recordings DIR"})
        try:
            found = await self._run(_recent_sessions, self.settings.recordings)
        except RecordError as err:
            raise _error(400, str(err)) from None
        return web.json_response({"sessions": found})

    # -- dry-run
    async def dryrun_start(self, request: web.Request) -> web.Response:
        _body, edits = await self._body(request)
        if not self.settings.recordings:
            raise _error(400, "no recordings: start the workbench with --recordings DIR")
        job = self.dryruns.start(self.ws, edits, self.settings.recordings, self.settings.config, self._diag)
        return web.json_response(job.status())

    async def dryrun_status(self, request: web.Request) -> web.Response:
        job = self.dryruns.get(request.match_info["id"])
        if job is None:
            raise _error(404, "no such dry-run")
        return web.json_response(job.status())

    async def dryrun_cancel(self, request: web.Request) -> web.Response:
        job = self.dryruns.get(request.match_info["id"])
        if job is None:
            raise _error(404, "no such dry-run")
        job.cancelled = True
        return web.json_response(job.status())

    # -- save and reload
    async def preview(self, request: web.Request) -> web.Response:
        _body, edits = await self._body(request)
        return web.json_response(await self._run(self._preview, edits))

    def _preview(self, edits: dict[str, str]) -> dict:
        diffs = []
        for name, text in sorted(edits.items()):
            old = self.ws.read(name)
            if old == text:
                continue
            diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                f"a/{name}", f"b/{name}"))
            diffs.append({"name": name, "diff": diff, "new": not os.path.exists(self.ws.resolve(name))})
        with shadow(self.ws, edits) as sh:
            ruleset, diags = compile_ruleset(sh.rules)
            errors = [self._diag(d, sh) for d in diags if d.level.value == "error"]
        return {"diffs": diffs, "compiles": ruleset is not None, "errors": errors,
                "version": ruleset.version if ruleset is not None else None,
                "saved_version": _saved_version(self.ws)}

    async def save(self, request: web.Request) -> web.Response:
        body, edits = await self._body(request)
        bases = body.get("bases") or {}
        return web.json_response(await self._run(self._save, edits, bases if isinstance(bases, dict) else {}))

    def _save(self, edits: dict[str, str], bases: dict) -> dict:
        with self._saving:          # the check for changes on disk and the writes, one save at a time
            return self._save_now(edits, bases)

    def _save_now(self, edits: dict[str, str], bases: dict) -> dict:
        for name in edits:
            self.ws.check_writable(name)
        preview = self._preview(edits)
        if not preview["compiles"]:
            raise _error(422, "the edited ruleset does not compile: nothing was saved", errors=preview["errors"])
        changed = [d["name"] for d in preview["diffs"]]
        stale = [name for name in changed if name in bases and bases[name] != digest(self.ws.read(name))]
        if stale:
            raise _error(409, "changed on disk since it was opened: " + ", ".join(stale)
                         + " (reload the page to see the change; nothing was saved)")
        for name in changed:
            self.ws.write(name, edits[name])
        version = _saved_version(self.ws)
        return {"saved": changed, "version": version,
                "digests": {name: digest(edits[name]) for name in edits}}

    async def reload(self, request: web.Request) -> web.Response:
        await self._body(request)
        version = await self._run(_saved_version, self.ws)
        if version is None:
            raise _error(422, "the saved ruleset does not compile: the server would refuse it")
        try:
            return web.json_response(self.reloader.signal(version))
        except ReloadError as err:
            raise _error(400, str(err)) from None

    async def reload_status(self, request: web.Request) -> web.Response:
        return web.json_response(await self._run(self.reloader.status))


def _error(status: int, message: str, **extra) -> web.HTTPException:
    import json

    cls = {400: web.HTTPBadRequest, 404: web.HTTPNotFound, 409: web.HTTPConflict,
           422: web.HTTPUnprocessableEntity}[status]
    return cls(text=json.dumps({"error": message, **extra}), content_type="application/json")


def _saved_version(ws: Workspace) -> str | None:
    """The version the server computes for the saved files (None: they do not compile)."""
    ruleset, _diags = compile_ruleset(ws.rules, plugins="inspect")
    return ruleset.version if ruleset is not None else None


def _recent_sessions(folder: str) -> list[dict]:
    """The last sessions recorded under ``folder``, newest first."""
    last: collections.deque = collections.deque(maxlen=RECENT_SESSIONS)
    for path in session_files([folder]):
        for _number, record in iter_records(path):
            last.append(record)
    out = []
    for rec in reversed(last):
        events = rec.get("events") or []
        helo = next((e.get("arg") for e in events if e.get("cmd") in ("helo", "ehlo")), None)
        sender = next((e.get("addr") for e in events if e.get("cmd") == "mail"), None)
        rcpts = [e.get("addr") for e in events if e.get("cmd") == "rcpt"][:5]
        out.append({"id": rec.get("id"), "time": rec.get("time"), "client": (rec.get("client") or {}).get("ip"),
                    "helo": helo, "from": sender, "rcpts": rcpts, "reply": rec.get("reply"),
                    "ruleset": rec.get("ruleset")})
    return out


def make_app(settings: bridge.Settings, token: str, host: str, port: int) -> web.Application:
    wb = Workbench(settings)
    app = web.Application(middlewares=[security.middleware(token, security.allowed_hosts(host, port))],
                          client_max_size=MAX_BODY)
    app["workbench"] = wb
    r = app.router
    r.add_get("/", wb.index)
    r.add_get("/static/{name}", wb.static)
    r.add_get("/api/state", wb.state)
    r.add_get("/api/file", wb.file)
    r.add_post("/api/files", wb.files)
    r.add_post("/api/lint", wb.lint)
    r.add_post("/api/tests", wb.tests)
    r.add_post("/api/test-line", wb.test_line)
    r.add_post("/api/trace", wb.trace)
    r.add_get("/api/sessions", wb.sessions)
    r.add_post("/api/dryrun", wb.dryrun_start)
    r.add_get("/api/dryrun/{id}", wb.dryrun_status)
    r.add_post("/api/dryrun/{id}/cancel", wb.dryrun_cancel)
    r.add_post("/api/preview", wb.preview)
    r.add_post("/api/save", wb.save)
    r.add_post("/api/reload", wb.reload)
    r.add_get("/api/reload", wb.reload_status)
    return app


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (``port`` 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def start(settings: bridge.Settings, token: str, sock: socket.socket) -> web.AppRunner:
    """Serve on ``sock``; the runner, to clean up."""
    host, port = sock.getsockname()[:2]
    runner = web.AppRunner(make_app(settings, token, host, port), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner


def url(host: str, port: int, token: str) -> str:
    shown = "HOST" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


def run(settings: bridge.Settings, token: str, host: str, port: int, announce) -> None:
    """Serve until interrupted; ``announce(url)`` is told the address to open."""
    sock = bind(host, port)

    async def main() -> None:
        runner = await start(settings, token, sock)
        announce(url(host, sock.getsockname()[1], token))
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
