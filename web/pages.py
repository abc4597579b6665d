"""The status pages: what an admin opens when a radiologist calls about a missing study.

Server-rendered (Jinja2, autoescaped: file names and reasons can be a
peer's text), no script, nothing loaded from elsewhere (a Content Security
Policy says so to the browser); the overview reloads itself every
:data:`REFRESH_SECONDS`.  Every ledger read runs on a worker thread, never on
the listener's event loop.  Routes:

- ``GET /``: health (the rules of ``dicom-adapter status``), counts per AE
  and state, the last hour's arrivals per minute, free space against
  ``min_free``, associations in progress, the oldest open group, recent
  studies, and what needs attention;
- ``GET /studies/{uid}``: one study's instances, jobs, exports and timeline;
- ``GET /healthz``: the health as JSON, 200 or 503, open to all (load
  balancers, the other nodes);
- ``GET /metrics``: the Prometheus metrics ``[metrics]`` also serves;
- ``GET``/``POST /actions/{tasks|files}/{id}/{retry|discard}``: a
  confirmation, then the action, for signed-in admins (``web.access``).

Patient IDs show only with ``[http] show_phi = true`` and a signed-in user.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from config import Config
from errors import IllegalTransition
from health import health
from ledger.dashboard import LISTED, Dashboard
from ledger.exports import Exports
from ledger.models import parse_time, utcnow
from ledger.processing import Processing
from ledger.records import TaskRecord
from ledger.states import State, TaskKind, TaskState
from ledger.store import Ledger
from ledger.tasks import Tasks
from spool.text import one_line
from web.access import Access, Refused
from web.auth import User

log = logging.getLogger(__name__)
REFRESH_SECONDS = 5
RECENT_STUDIES = 10
LISTED_INSTANCES = 1000  # rows of a study page's instances (it says how many more)
LISTED_EVENTS = 2000  # the newest events of a study page's timeline
MIN_REDACTED = 3  # shortest Patient ID or group key blanked out of text
# A Study Instance UID as recorded (a peer's may break the UID rules); only ever a parameter.
UID = re.compile(r"[^/]{1,64}")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ACTIONS = {("tasks", "retry"), ("files", "discard")}


@dataclass(frozen=True)
class Live:
    """What the running service knows that the ledger does not."""

    associations: int  # DICOM associations in progress on this node
    intake_waiting: int  # files written, waiting for intake to record them


@dataclass(frozen=True)
class Viewer:
    """Who looks at a page, and so what it may show."""

    user: User | None
    show_phi: bool

    @property
    def admin(self) -> bool:
        return self.user is not None and self.user.admin


class Pages:
    """The page routes over the ledger, the config in force and the service's live facts."""

    def __init__(
        self,
        config: Callable[[], Config],
        ledger: Ledger,
        live: Callable[[], Live],
        access: Access,
        metrics: Callable[[], bytes],
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.dashboard = Dashboard(ledger)
        self.live = live
        self.access = access
        self.metrics_text = metrics
        self.templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
        self.templates.env.filters.update(
            age=_age, short_uid=_short_uid, size=_size, redact=_redact
        )

    def routes(self) -> list[Route]:
        return [
            Route("/", _answering(self.overview)),
            Route("/studies/{uid}", _answering(self.study)),
            Route("/healthz", _answering(self.healthz)),
            Route("/metrics", _answering(self.metrics)),
            Route("/actions/{what}/{id:int}/{verb}", _answering(self.confirm), methods=["GET"]),
            Route("/actions/{what}/{id:int}/{verb}", _answering(self.act), methods=["POST"]),
        ]

    # -- pages -----------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        viewer = await self._viewer(request)
        facts = await run_in_threadpool(self._overview, viewer)
        return await self._page(request, "overview.html", viewer, facts)

    async def study(self, request: Request) -> Response:
        viewer = await self._viewer(request)
        uid = request.path_params["uid"]
        if not UID.fullmatch(uid):
            raise Refused(404, "not a Study Instance UID")
        detail = await run_in_threadpool(self.dashboard.study, self.config().aes, uid)
        if not detail.instances:
            raise Refused(404, f"no study {uid} in the ledger")
        hidden: set[str] = set()
        if not viewer.show_phi:
            hidden = {row.patient_id for row in detail.instances if row.patient_id}
            hidden |= await run_in_threadpool(self._patient_keys, detail.tasks)
        facts = {
            "uid": uid,
            "detail": detail,
            "instances": detail.instances[:LISTED_INSTANCES],
            "timeline": detail.timeline[-LISTED_EVENTS:],
            "hidden": hidden,
        }
        return await self._page(request, "study.html", viewer, facts)

    async def healthz(self, request: Request) -> Response:
        try:
            facts = await run_in_threadpool(health, self.config(), self.ledger)
        except Exception as exc:  # the ledger down, say: unhealthy, and said why
            log.warning("healthz: the health facts could not be read: %s", one_line(exc))
            body = {"healthy": False, "problems": [f"health unknown: {one_line(exc)}"]}
            return Response(json.dumps(body), 503, media_type="application/json")
        body = {
            "healthy": facts["healthy"],
            "listening": facts["listening"],
            "problems": facts["problems"],
            "spool_free_bytes": facts["spool_free_bytes"],
            "spool_min_free_bytes": facts["spool_min_free_bytes"],
            "failed_jobs": len(facts["failed_jobs"]),
            "failed_exports": len(facts["failed_exports"]),
            "undelivered_files": facts["undelivered_files"],
        }
        return Response(
            json.dumps(body),
            200 if facts["healthy"] else 503,
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(self, request: Request) -> Response:
        await self._viewer(request)
        text = await run_in_threadpool(self.metrics_text)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- actions ---------------------------------------------------------------

    async def confirm(self, request: Request) -> Response:
        user, action, subject = await self._action(request)
        viewer = Viewer(user, self.config().http.show_phi)
        facts = {
            "action": action,
            "subject": subject,
            "verb": request.path_params["verb"],
            "csrf": self.access.csrf_token(user, action),
        }
        return await self._page(request, "confirm.html", viewer, facts)

    async def act(self, request: Request) -> Response:
        user, action, subject = await self._action(request)
        form = await request.form(max_files=0, max_fields=4, max_part_size=4096)
        token = form.get("csrf")
        self.access.check_csrf(user, action, token if isinstance(token, str) else None)
        what, verb, ident = (request.path_params[k] for k in ("what", "verb", "id"))
        try:
            if (what, verb) == ("tasks", "retry"):
                reason = f"retry requested by {user.name} on the status page"
                await run_in_threadpool(Tasks(self.ledger).retry, ident, None, reason)
            else:
                reason = f"discarded by {user.name} on the status page (its file stays on disk)"
                await run_in_threadpool(Exports(self.ledger).discard_item, ident, reason)
        except (IllegalTransition, LookupError) as exc:
            raise Refused(409, f"{subject}: {exc}") from None
        log.info("%s: %s", subject, reason)
        return RedirectResponse("/", 303)

    async def _action(self, request: Request) -> tuple[User, str, str]:
        """The admin asking, the action's path, and what it acts on, in words."""
        what, verb, ident = (request.path_params[k] for k in ("what", "verb", "id"))
        if (what, verb) not in ACTIONS:
            raise Refused(404, f"no action {verb} for {what}")
        user = await self.access.admin(request)
        subject = await run_in_threadpool(self._subject, what, ident)
        return user, f"/actions/{what}/{ident}/{verb}", subject

    def _subject(self, what: str, ident: int) -> str:
        if what == "tasks":
            try:
                task = Tasks(self.ledger).get(ident)
            except LookupError:
                raise Refused(404, f"no job or export {ident}") from None
            if task.state != TaskState.FAILED:
                raise Refused(409, f"{task.noun} {ident} is {task.state}, not failed")
            return f"{task.noun} {ident} ({task.target}, {task.item_count} items)"
        return f"undelivered export file {ident}"

    # -- helpers ---------------------------------------------------------------

    async def _viewer(self, request: Request) -> Viewer:
        user = await self.access.reader(request)
        return Viewer(user, self.config().http.show_phi and user is not None)

    def _overview(self, viewer: Viewer) -> dict[str, Any]:
        """Everything the overview shows, read in one go on a worker thread."""
        config = self.config()
        now = utcnow()
        live = self.live()  # before health(): its C-ECHO is an association of its own
        facts = health(config, self.ledger)
        oldest = Processing(self.ledger).oldest_open_group(list(config.processed_aes))
        ae = config.aes.get(oldest.called_ae) if oldest else None
        studies = []
        for study in self.ledger.recent_studies(RECENT_STUDIES):
            study["sources"] = self.dashboard.study_sources(
                str(study["called_ae"]), str(study["study_instance_uid"])
            )
            study["last_received_at"] = parse_time(str(study["last_received_at"]))
            studies.append(study)
        per_minute = self.dashboard.received_per_minute(now)
        failed = self.dashboard.failed_tasks()
        undelivered = self.dashboard.undelivered()
        hidden = (
            set()
            if viewer.show_phi
            else self._patient_keys(failed + [entry.task for entry in undelivered])
        )
        return {
            "now": now,
            "health": facts,
            "live": live,
            "states": [str(state) for state in State],
            "counts": self.dashboard.counts_by_ae(),
            "per_minute": per_minute,
            "chart": _bars(per_minute),
            "oldest": oldest,
            "oldest_key_shown": oldest is not None
            and (viewer.show_phi or (ae is not None and ae.group_key_names_no_patient)),
            "studies": studies,
            "failed": failed,
            "undelivered": undelivered,
            "hidden": hidden,
            "quarantined": self.dashboard.quarantined(),
            "listed": LISTED,
            "refresh": REFRESH_SECONDS,
        }

    def _patient_keys(self, tasks: list[TaskRecord]) -> set[str]:
        """What may name a patient in these tasks' text: the Patient IDs of their jobs'
        instances, and group keys taken from a patient-level attribute."""
        aes = self.config().aes
        jobs = {task.id if task.kind == TaskKind.PROCESS else task.parent_id for task in tasks}
        keys = {
            task.group_key
            for task in tasks
            if task.group_key
            and not (task.target in aes and aes[task.target].group_key_names_no_patient)
        }
        return keys | self.dashboard.patient_ids({job for job in jobs if job is not None})

    async def _page(
        self, request: Request, template: str, viewer: Viewer, facts: dict[str, Any]
    ) -> Response:
        """The page rendered on a worker thread: a large study is a large page."""
        context = {"viewer": viewer, "now": utcnow(), "node": self.config().node.name}
        context |= {"hidden": set(), **facts}
        return await run_in_threadpool(
            self.templates.TemplateResponse, request, template, context, headers=SECURITY_HEADERS
        )


def _answering(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """A route that answers a Refused with its status and one line."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except SQLAlchemyError as exc:  # the ledger down: one line, not a traceback a refresh
            log.warning(
                "%s %s: the ledger does not answer: %s",
                request.method,
                request.url.path,
                one_line(exc),
            )
            return PlainTextResponse(
                "the ledger does not answer: try again shortly\n", 503, headers={"Retry-After": "5"}
            )
        except Refused as refused:
            if refused.status >= 500 or refused.status in (401, 403):
                log.warning(
                    "%s %s refused %d: %s",
                    request.method,
                    request.url.path,
                    refused.status,
                    refused.text,
                )
            return PlainTextResponse(refused.text + "\n", refused.status, headers=refused.headers)

    return route


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    count: int
    minutes_ago: int


CHART_HEIGHT = 60.0
BAR_WIDTH = 10.0


def _bars(per_minute: list[int]) -> list[Bar]:
    """One SVG bar per minute, scaled to the busiest minute."""
    top = max(per_minute, default=0) or 1
    bars = []
    for i, count in enumerate(per_minute):
        height = CHART_HEIGHT * count / top
        minutes_ago = len(per_minute) - 1 - i
        bars.append(Bar(i * BAR_WIDTH, CHART_HEIGHT - height, height, count, minutes_ago))
    return bars


def _redact(text: str | None, hidden: set[str]) -> str | None:
    """``text`` with each of ``hidden`` (Patient IDs, patient group keys) blanked out, for
    a viewer who may not see patient data; values under 3 characters are left, as they
    would blank out ordinary numbers."""
    if not text:
        return text
    for value in sorted(hidden, key=len, reverse=True):
        if len(value) >= MIN_REDACTED:
            text = text.replace(value, "[patient data]")
    return text


def _age(moment: datetime | None) -> str:
    """``42 s``, ``5 min``, ``3 h``, ``2 d`` ago."""
    if moment is None:
        return "-"
    seconds = max(0, int((utcnow() - moment).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _short_uid(uid: str | None) -> str:
    """The start and end of a long UID: enough to tell studies apart on a phone."""
    if not uid:
        return "-"
    return uid if len(uid) <= 24 else f"{uid[:10]}…{uid[-10:]}"


def _size(count: int | None) -> str:
    if count is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"
