"""The operations web console: Starlette, Jinja2 templates, live updates by server-sent events.

Every page needs a login; what a page shows and what a form sends go through the
operator's :class:`~diemcau_centre.web.store.Scope`, so a province operator
neither sees nor commands another province (a box of another province is
"not found", as if it did not exist). Live parts of a page carry ``data-live``
(the URL of their fragment); the browser fetches it again when ``/events`` says
something it shows has changed.

    app = make_app(db, service, secret_key=secrets.token_hex(32))
    uvicorn.run(app, host="127.0.0.1", port=8080)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from anyio import to_thread
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from diemcau.protocol import ALERT_CODES

from .service import BROADCAST_COMMANDS, CentreService, CommandRefused
from .store import BoxFilter, Changes, FleetDb, Operator

HERE = Path(__file__).resolve().parent
COALESCE_S = 0.5  # a browser is told at most this often that something changed
MAX_DEVICES_PER_EVENT = 500

STATE_LABELS = {"ready": "Trực tuyến", "updating": "Đang cập nhật",
                "disconnected": "Đã ngắt", "lost": "Mất kết nối",
                # Nothing heard for too long (no will on a broker cluster): store.FleetDb.gone.
                "gone": "Mất liên lạc", None: "Chưa thấy"}
MEETING_LABELS = {"idle": "Rảnh", "invited": "Được mời", "joining": "Đang vào họp",
                  "live": "Đang họp", "leaving": "Đang rời họp", "error": "Lỗi", None: "-"}
COMMAND_LABELS = {"meeting.invite": "Mời họp", "meeting.join": "Vào họp",
                  "meeting.leave": "Rời họp", "firmware.update": "Cập nhật phần mềm"}
# The arguments the broadcast form offers for each command (the rest take their defaults).
COMMAND_FIELDS = {
    "meeting.invite": [("meeting_id", "Mã cuộc họp"), ("title", "Tiêu đề"),
                       ("publish", "Địa chỉ gửi hình (srt://)"),
                       ("play", "Địa chỉ nhận chương trình (srt://)")],
    "meeting.join": [("meeting_id", "Mã cuộc họp"), ("publish", "Địa chỉ gửi hình (srt://)"),
                     ("play", "Địa chỉ nhận chương trình (srt://)")],
    "meeting.leave": [("meeting_id", "Mã cuộc họp (để trống: cuộc họp hiện tại)")],
    # The signed release manifest, as `diemcau-centre release sign` writes it (docs/updates.md).
    "firmware.update": [("manifest", "Bản kê phát hành đã ký")],
}
STATUS_LABELS = {"accepted": "đã nhận", "in_progress": "đang làm", "succeeded": "thành công",
                 "failed": "thất bại", "rejected": "từ chối", "expired": "hết hạn",
                 "duplicate": "trùng lặp", None: "im lặng"}
# Why a box has not answered (rollcall.Silent.why).
SILENT_LABELS = {"offline": "Ngoại tuyến", "online": "Trực tuyến nhưng không trả lời",
                 "updating": "Đang cập nhật phần mềm", "never_seen": "Chưa từng thấy"}
FILTER_KEYS = ("province", "district", "commune", "state", "alert", "firmware", "search")


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S %d/%m/%Y")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(int(time.time() - ts), 0)
    for unit, size in (("ngày", 86400), ("giờ", 3600), ("phút", 60)):
        if s >= size:
            return f"{s // size} {unit} trước"
    return f"{s} giây trước"


def _filter_of(params: Any) -> BoxFilter:
    return BoxFilter(**{k: str(params.get(k, "")).strip()[:100] for k in FILTER_KEYS})


def _query(flt: BoxFilter, **extra: Any) -> str:
    values = {k: getattr(flt, k) for k in FILTER_KEYS if getattr(flt, k)}
    values.update({k: v for k, v in extra.items() if v})
    return urlencode(values)


class LoginGuard:
    """Failed logins limited per user name and per client address (a moving window).

    Past the limit, every attempt of that name or address is refused with no password
    checked, until the window has moved past the oldest failure; a successful login
    clears its name's failures. Kept in memory: one console process.
    """

    def __init__(self, per_user: str = "5 per 15 minutes",
                 per_address: str = "20 per 15 minutes") -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.per_user: RateLimitItem = parse(per_user)
        self.per_address: RateLimitItem = parse(per_address)

    def _keys(self, username: str, address: str) -> list[tuple[RateLimitItem, str, str]]:
        return [(self.per_user, "user", username[:64]), (self.per_address, "address", address)]

    def wait_s(self, username: str, address: str) -> float | None:
        """Seconds before this name and address may try again; None: they may now."""
        for limit, kind, key in self._keys(username, address):
            if not self._limiter.test(limit, kind, key):
                reset = self._limiter.get_window_stats(limit, kind, key).reset_time
                return max(reset - time.time(), 1.0)
        return None

    def failed(self, username: str, address: str) -> None:
        for limit, kind, key in self._keys(username, address):
            self._limiter.hit(limit, kind, key)

    def succeeded(self, username: str) -> None:
        self._limiter.clear(self.per_user, "user", username[:64])


def _minutes(seconds: float) -> int:
    return max(1, -(-int(seconds) // 60))


class Hub:
    """Fans the service's changes out to every open ``/events`` stream."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queues: set[asyncio.Queue[Changes]] = set()

    def from_thread(self, changes: Changes) -> None:
        """The service's listener (its thread): hand the changes to the event loop."""
        if self.loop is not None and changes:
            self.loop.call_soon_threadsafe(self._publish, changes)

    def _publish(self, changes: Changes) -> None:
        for q in self.queues:
            q.put_nowait(changes)


def make_app(db: FleetDb, service: CentreService | None, *, secret_key: str,
             https_only: bool = False, login_guard: LoginGuard | None = None) -> Starlette:
    """The console as an ASGI application; ``service`` None: a view without live MQTT."""
    guard = login_guard or LoginGuard()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters.update(when=_when, ago=_ago)
    env.globals.update(STATE_LABELS=STATE_LABELS, MEETING_LABELS=MEETING_LABELS,
                       COMMAND_LABELS=COMMAND_LABELS, STATUS_LABELS=STATUS_LABELS,
                       SILENT_LABELS=SILENT_LABELS,
                       ALERT_CODES=ALERT_CODES, query=_query)
    hub = Hub()
    if service is not None:
        service.add_listener(hub.from_thread)

    def current(request: Request) -> Operator | None:
        name = request.session.get("user")
        return db.operator(name) if isinstance(name, str) else None

    def page(request: Request, name: str, context: dict[str, Any], status: int = 200
             ) -> Response:
        context.setdefault("operator", request.state.operator)
        context.setdefault("csrf", request.session.get("csrf", ""))
        context.setdefault("can_send", service is not None and service.can_send)
        return templates.TemplateResponse(request, name, context, status_code=status)

    Handler = Callable[[Request], Awaitable[Response]]

    def login_required(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            operator = await to_thread.run_sync(current, request)
            if operator is None:
                if request.url.path.startswith("/events") or "fragment" in request.query_params:
                    return Response("đăng nhập lại", status_code=401)
                return RedirectResponse(f"/login?{urlencode({'next': request.url.path})}",
                                        status_code=303)
            request.state.operator = operator
            if request.method == "POST":
                form = await request.form()
                if not secrets.compare_digest(str(form.get("csrf", "")),
                                              request.session.get("csrf", "")):
                    raise HTTPException(403, "phiên làm việc không hợp lệ; tải lại trang")
                request.state.form = form
            return await handler(request)
        return wrapped

    # ------------------------------------------------------------ login

    async def login(request: Request) -> Response:
        request.state.operator = None
        nxt = request.query_params.get("next", "/fleet")
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/fleet"  # never send an operator off the console
        if request.method == "GET":
            return page(request, "login.html", {"next": nxt, "error": ""})
        form = await request.form()
        username, password = str(form.get("username", "")), str(form.get("password", ""))
        address = request.client.host if request.client else "?"
        wait = guard.wait_s(username, address)
        if wait is not None:
            response = page(request, "login.html", {"next": nxt, "error": (
                f"Đăng nhập sai quá nhiều lần. Vui lòng thử lại sau {_minutes(wait)} phút.")},
                status=429)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        operator = await to_thread.run_sync(db.check_login, username, password)
        if operator is None:
            guard.failed(username, address)
            if guard.wait_s(username, address) is not None:
                # The admin's log says who was locked out, and from where.
                await to_thread.run_sync(db.note, username[:64] or "-", "login_locked",
                                         f"too many failed logins (from {address})")
            return page(request, "login.html", {"next": nxt, "error": "Sai tên hoặc mật khẩu"},
                        status=401)
        guard.succeeded(username)
        request.session.clear()
        request.session.update(user=operator.username, csrf=secrets.token_urlsafe(24))
        await to_thread.run_sync(db.note, operator.username, "login", "")
        return RedirectResponse(nxt, status_code=303)

    @login_required
    async def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    # ------------------------------------------------------------ the fleet

    async def root(request: Request) -> Response:
        return RedirectResponse("/fleet", status_code=303)

    def _fleet_context(operator: Operator, flt: BoxFilter, page_no: int) -> dict[str, Any]:
        scope = operator.scope
        return {"flt": flt, "rows": db.boxes_page(scope, flt, page_no),
                "summary": db.summary(scope), "choices": db.choices(scope)}

    @login_required
    async def fleet(request: Request) -> Response:
        flt = _filter_of(request.query_params)
        page_no = _int(request.query_params.get("page"), 1)
        if flt.province and not request.state.operator.scope.allows(flt.province):
            raise HTTPException(404, "không có tỉnh này")
        ctx = await to_thread.run_sync(_fleet_context, request.state.operator, flt, page_no)
        name = "_rows.html" if "fragment" in request.query_params else "fleet.html"
        return page(request, name, ctx)

    @login_required
    async def summary(request: Request) -> Response:
        rows = await to_thread.run_sync(db.summary, request.state.operator.scope)
        return page(request, "_summary.html", {"summary": rows, "level": "province"})

    @login_required
    async def place(request: Request) -> Response:
        code = request.path_params["code"]
        level = {"p": "province", "d": "district", "c": "commune"}.get(code[:1])
        if level is None:
            raise HTTPException(404, "không có địa bàn này")
        flt = BoxFilter(**{level: code})
        scope = request.state.operator.scope

        def load() -> dict[str, Any]:
            rows = db.boxes_page(scope, flt, _int(request.query_params.get("page"), 1))
            child = {"province": "district", "district": "commune"}.get(level)
            return {"code": code, "level": level, "name": db.place_name(code), "rows": rows,
                    "flt": flt, "child": child,
                    "summary": db.summary(scope, child, code) if child else []}
        ctx = await to_thread.run_sync(load)
        if ctx["rows"].total == 0:
            raise HTTPException(404, "không có địa bàn này")
        if "fragment" in request.query_params:
            return page(request, "_place.html", ctx)
        return page(request, "place.html", ctx)

    @login_required
    async def box(request: Request) -> Response:
        dev = request.path_params["device"]
        found = await to_thread.run_sync(db.box, request.state.operator.scope, dev)
        if found is None:
            raise HTTPException(404, "không có điểm cầu này")
        name = "_box.html" if "fragment" in request.query_params else "box.html"
        return page(request, name, {"box": found})

    # ------------------------------------------------------------ alerts

    @login_required
    async def alerts_page(request: Request) -> Response:
        rows = await to_thread.run_sync(db.alerts_list, request.state.operator.scope)
        name = "_alerts.html" if "fragment" in request.query_params else "alerts.html"
        return page(request, name, {"alerts": rows})

    @login_required
    async def acknowledge(request: Request) -> Response:
        form = request.state.form
        operator = request.state.operator
        done = await to_thread.run_sync(db.acknowledge, operator.scope, operator.username,
                                        str(form.get("device", "")), str(form.get("code", "")))
        if not done:
            raise HTTPException(404, "không có cảnh báo này")
        nxt = str(form.get("next", "/alerts"))
        return RedirectResponse(nxt if nxt.startswith("/") and not nxt.startswith("//")
                                else "/alerts", status_code=303)

    # ------------------------------------------------------------ commands

    @login_required
    async def broadcast_form(request: Request) -> Response:
        flt = _filter_of(request.query_params)
        scope = request.state.operator.scope
        if flt.province and not scope.allows(flt.province):
            raise HTTPException(404, "không có tỉnh này")
        count = len(await to_thread.run_sync(db.devices, scope, flt))
        return page(request, "broadcast.html", {
            "flt": flt, "count": count, "commands": BROADCAST_COMMANDS,
            "fields": COMMAND_FIELDS, "error": "",
            "cmd": request.query_params.get("cmd", "meeting.join")})

    @login_required
    async def broadcast_send(request: Request) -> Response:
        form = request.state.form
        flt = _filter_of(form)
        cmd = str(form.get("cmd", ""))
        args = {name: str(form.get(f"{cmd}:{name}", "")).strip()
                for name, _ in COMMAND_FIELDS.get(cmd, [])}
        if service is None:
            raise HTTPException(503, "dịch vụ trung tâm không chạy")
        try:
            jti = await to_thread.run_sync(
                lambda: service.broadcast(request.state.operator, cmd, args, flt))
        except CommandRefused as exc:
            count = len(await to_thread.run_sync(db.devices, request.state.operator.scope, flt))
            return page(request, "broadcast.html", {
                "flt": flt, "count": count, "commands": BROADCAST_COMMANDS,
                "fields": COMMAND_FIELDS, "error": str(exc), "cmd": cmd}, status=400)
        return RedirectResponse(f"/commands/{jti}", status_code=303)

    @login_required
    async def commands_page(request: Request) -> Response:
        rows = await to_thread.run_sync(db.commands_list, request.state.operator.scope)
        return page(request, "commands.html", {"commands": rows})

    @login_required
    async def rollcall(request: Request) -> Response:
        jti = request.path_params["jti"]
        roll = await to_thread.run_sync(db.rollcall, request.state.operator.scope, jti)
        if roll is None:
            raise HTTPException(404, "không có lệnh này")
        name = "_rollcall.html" if "fragment" in request.query_params else "rollcall.html"
        return page(request, name, {"roll": roll})

    @login_required
    async def resend(request: Request) -> Response:
        if service is None:
            raise HTTPException(503, "dịch vụ trung tâm không chạy")
        jti = request.path_params["jti"]
        try:
            new = await to_thread.run_sync(
                lambda: service.resend_silent(request.state.operator, jti))
        except CommandRefused as exc:
            raise HTTPException(400, str(exc)) from None
        return RedirectResponse(f"/commands/{new}", status_code=303)

    @login_required
    async def audit_page(request: Request) -> Response:
        if request.state.operator.role != "admin":
            raise HTTPException(403, "chỉ quản trị viên xem nhật ký")
        rows = await to_thread.run_sync(db.audit_list)
        return page(request, "audit.html", {"entries": rows})

    # ------------------------------------------------------------ live updates

    @login_required
    async def events(request: Request) -> Response:
        scope = request.state.operator.scope
        if hub.loop is None:
            hub.loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Changes] = asyncio.Queue()
        hub.queues.add(queue)

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                yield {"event": "hello", "data": "{}"}
                while True:
                    first = await queue.get()
                    await asyncio.sleep(COALESCE_S)  # gather what follows into one event
                    merged = Changes(set(first.devices), set(first.commands), first.alerts)
                    while not queue.empty():
                        more = queue.get_nowait()
                        merged.devices |= more.devices
                        merged.commands |= more.commands
                        merged.alerts |= more.alerts
                    # Only this operator's boxes: another province's ids are not shown.
                    devices = sorted(d for d in merged.devices
                                     if scope.allows(db.province_of.get(d)))
                    if not devices and not merged.commands:
                        continue
                    yield {"event": "change", "data": json.dumps({
                        "devices": devices[:MAX_DEVICES_PER_EVENT],
                        "more": len(devices) > MAX_DEVICES_PER_EVENT,
                        "commands": sorted(merged.commands),
                        "alerts": merged.alerts and bool(devices)})}
            finally:
                hub.queues.discard(queue)

        return EventSourceResponse(stream(), ping=15)

    async def started() -> None:
        hub.loop = asyncio.get_running_loop()

    routes = [
        Route("/", root),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/fleet", fleet),
        Route("/summary", summary),
        Route("/places/{code}", place),
        Route("/boxes/{device}", box),
        Route("/alerts", alerts_page),
        Route("/alerts/ack", acknowledge, methods=["POST"]),
        Route("/broadcast", broadcast_form),
        Route("/broadcast", broadcast_send, methods=["POST"]),
        Route("/commands", commands_page),
        Route("/commands/{jti}", rollcall),
        Route("/commands/{jti}/resend", resend, methods=["POST"]),
        Route("/audit", audit_page),
        Route("/events", events),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(SessionMiddleware, secret_key=secret_key, max_age=12 * 3600,
                             same_site="strict", https_only=https_only,
                             session_cookie="diemcau_console")]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        request.state.operator = getattr(request.state, "operator", None)
        return page(request, "error.html", {"status": exc.status_code, "detail": exc.detail},
                    status=exc.status_code)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await started()
        yield

    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error})


def _int(text: str | None, default: int) -> int:
    try:
        return max(1, int(text or default))
    except ValueError:
        return default
