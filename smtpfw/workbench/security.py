"""Who may use the workbench, and from which page.

- **A token on every request**, loopback included (other users of the
  machine reach loopback too): the URL printed at start carries it once
  (``/?token=...``); the page then keeps it in a cookie that is HttpOnly
  and SameSite=Strict, so no other site's page sends it.  Scripts may send
  ``Authorization: Bearer TOKEN`` instead.
- **Host**: on a loopback address only ``127.0.0.1:PORT``, ``localhost:PORT``
  and ``[::1]:PORT`` are answered (a DNS-rebinding page has another name).
- **State-changing requests** (every POST) need the header
  ``X-Smtpfw-Workbench: 1`` and a JSON body: a cross-site form cannot send
  either, and a cross-site script cannot without a CORS preflight, which
  is never granted.  An ``Origin`` or ``Sec-Fetch-Site`` header that names
  another site is refused as well.
- Answers carry a Content-Security-Policy that allows only the page's own
  script and no framing, and no Referer (the token is in the first URL).
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

from aiohttp import web

from smtpfw.commands.errors import CommandError
from smtpfw.workbench.files import PathRefused

COOKIE = "smtpfw_workbench"      # + "_PORT": browsers send a cookie to every port of a host
CSRF_HEADER = "X-Smtpfw-Workbench"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SAFE_METHODS = ("GET", "HEAD")


def new_token() -> str:
    return secrets.token_urlsafe(24)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> set[str] | None:
    """The Host headers answered (None: any, when listening on every address)."""
    if host in ("0.0.0.0", "::", ""):
        return None
    names = {host, f"[{host}]" if ":" in host else host}
    if is_loopback(host):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return {f"{n}:{port}" for n in names} | (names if port == 80 else set())


def refused(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def middleware(token: str, hosts: set[str] | None):
    @web.middleware
    async def guard(request: web.Request, handler):
        try:
            response = await _check(request, handler, token, hosts)
        except (PathRefused, CommandError) as err:       # a request the workbench cannot do: say why
            response = refused(400, str(err))
        except RecursionError:
            response = refused(400, "the request is nested too deeply")
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response
    return guard


async def _check(request: web.Request, handler, token: str, hosts: set[str] | None) -> web.StreamResponse:
    if hosts is not None and request.host not in hosts:
        return refused(421, f"this workbench does not answer for host {request.host!r}")
    cookie = cookie_name(request)
    given = request.cookies.get(cookie) or _bearer(request)
    query_token = request.query.get("token")
    if query_token is not None and request.method == "GET" and request.path == "/":
        if not hmac.compare_digest(query_token.encode(), token.encode()):
            return refused(403, "wrong token: use the URL `smtpfw workbench` printed")
        response = web.HTTPSeeOther("/")          # the token leaves the address bar and the history
        response.set_cookie(cookie, token, httponly=True, samesite="Strict", path="/")
        return response
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        return refused(401, "a token is needed: open the URL `smtpfw workbench` printed (it ends in ?token=...)")
    if request.method not in SAFE_METHODS:
        problem = _cross_site(request)
        if problem:
            return refused(403, problem)
    return await handler(request)


def cookie_name(request: web.Request) -> str:
    """The token's cookie, named for this workbench's port: a browser sends
    a host's cookies to all its ports, and SameSite counts them one site, so
    another program on another port of 127.0.0.1 must not find it under
    the name it knows (nor a second workbench overwrite it)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if isinstance(sockname, tuple) and len(sockname) > 1 else request.url.port
    return f"{COOKIE}_{port}"


def _bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.startswith("Bearer ") else None


def _cross_site(request: web.Request) -> str | None:
    if request.headers.get(CSRF_HEADER) != "1":
        return f"a request that changes something needs the header {CSRF_HEADER}: 1 (sent by the workbench's page)"
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return f"a request from another site ({origin}) is refused"
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return "a request from another site is refused"
    if request.content_type != "application/json":
        return "the body must be JSON (Content-Type: application/json)"
    return None
