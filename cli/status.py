"""``dicom-adapter status``: health, counts by state and recent studies.

Run by monitoring scripts, so it exits 1 when unhealthy and keeps patient
identifiers out unless asked (the output ends up in tickets).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cli.common import config_option, iso, load, require_current_schema
from config import Config
from errors import EXIT_FAILURE
from health import health
from ledger.db import make_engine, shown_url
from ledger.exports import Exports
from ledger.models import utcnow
from ledger.nodes import NodeRecord, Nodes
from ledger.processing import Processing
from ledger.states import TaskKind
from ledger.store import Ledger
from ledger.tasks import Tasks
from ledger.wording import plural

PHI_COLUMNS = frozenset({"patient_id"})  # of the studies view: only with status --phi


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--studies", default=10, show_default=True, help="How many recent studies to list.")
@click.option("--phi", is_flag=True, help="Include patient identifiers (Patient ID, group keys).")
def status(config_path: Path | None, as_json: bool, studies: int, phi: bool) -> None:
    """Show health, instance counts by state and the most recent studies.

    Exits 1 when unhealthy (not listening, disk under min_free, or a failed
    job or export), for monitoring scripts.  Patient identifiers (Patient
    ID, a group key taken from a patient-level attribute) are left out
    unless --phi is given: the output ends up in tickets and monitoring.

    \b
    Example:
      dicom-adapter status --json
    """
    config = load(config_path)
    engine = make_engine(config.ledger.url)
    revision = require_current_schema(config, engine)
    ledger = Ledger(engine)
    oldest = Processing(ledger).oldest_open_group(list(config.processed_aes))
    report = {
        "ledger": shown_url(config.ledger.url),
        "revision": revision,
        "spool": str(config.storage.spool),
        "counts": ledger.counts_by_state(),
        "jobs": Tasks(ledger).counts(TaskKind.PROCESS),
        "exports": Tasks(ledger).counts(TaskKind.EXPORT),
        "export_files": Exports(ledger).item_counts(),
        "health": health(config, ledger),
        "nodes": [_node_json(node) for node in Nodes(ledger).listing()],
        "oldest_open_group": None
        if oldest is None
        else {
            "called_ae": oldest.called_ae,
            "group_key": oldest.group_key
            if phi or _group_key_is_a_uid(config, oldest.called_ae)
            else None,
            "instances": oldest.instances,
            "first_received_at": iso(oldest.first_received_at),
            "waiting_seconds": round((utcnow() - oldest.first_received_at).total_seconds(), 1),
        },
        "studies": [
            study if phi else {k: v for k, v in study.items() if k not in PHI_COLUMNS}
            for study in ledger.recent_studies(studies)
        ],
    }
    engine.dispose()
    click.echo(json.dumps(report, indent=2) if as_json else _status_text(report))
    if not report["health"]["healthy"]:
        sys.exit(EXIT_FAILURE)


def _group_key_is_a_uid(config: Config, called_ae: str) -> bool:
    ae = config.aes.get(called_ae)
    return ae is not None and ae.group_key_names_no_patient


def _status_text(report: dict[str, Any]) -> str:
    facts = report["health"]
    problems = [
        problem
        for problem, present in (
            ("not listening", not facts["listening"]),
            (
                "spool free space under min_free",
                facts["spool_free_bytes"] < facts["spool_min_free_bytes"],
            ),
            (
                f"failed jobs {facts['failed_jobs']} "
                "(dicom-adapter tasks retry ID, or tasks discard ID)",
                facts["failed_jobs"],
            ),
            (
                f"failed exports {facts['failed_exports']} "
                "(dicom-adapter tasks retry ID, or tasks discard ID)",
                facts["failed_exports"],
            ),
            (
                f"{facts['undelivered_files']} undelivered export files, kept on disk "
                "(dicom-adapter exports --state failed)",
                facts["undelivered_files"],
            ),
        )
        if present
    ] + facts["problems"]
    lines = [
        "Health: " + ("healthy" if facts["healthy"] else "UNHEALTHY: " + "; ".join(problems)),
        f"Ledger: {report['ledger']} (revision {report['revision']})",
        f"Spool:  {report['spool']} ({facts['spool_free_bytes'] / 2**30:.1f} GiB free)",
        f"Last reconcile: {facts['last_reconcile_at'] or 'never'}",
        "",
        "Nodes:",
        *(_node_line(node) for node in report["nodes"]),
        *([] if report["nodes"] else ["  (none has run on this ledger yet)"]),
        "",
        "Instances by state:",
    ]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["counts"].items()]
    lines += ["", "Jobs by state:"]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["jobs"].items()]
    lines += ["", "Exports by state:"]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["exports"].items()]
    lines += ["", "Export files by state:"]
    lines += [f"  {state:<12} {count:>8}" for state, count in report["export_files"].items()]
    group = report["oldest_open_group"]
    lines += [
        "",
        "Oldest open group: "
        + (
            "(none)"
            if group is None
            else (
                f"{group['called_ae']} {group['group_key'] or '(group key: --phi)'}, "
                f"{plural(group['instances'], 'instance')}, "
                f"waiting {group['waiting_seconds']:g}s"
            )
        ),
    ]
    lines += ["", "Recent studies:"]
    if not report["studies"]:
        lines.append("  (none)")
    for study in report["studies"]:
        lines.append(
            f"  {study['called_ae']:<16} {study['study_instance_uid'] or '-':<64} "
            f"{study['instances']:>6} instances, {study['received']:>6} received, "
            f"last {study['last_received_at']}"
            + (f", patient {study['patient_id']}" if "patient_id" in study else "")
        )
    return "\n".join(lines)


def _node_json(node: NodeRecord) -> dict[str, Any]:
    return {
        "name": node.name,
        "pid": node.pid,
        "listening": node.listening,
        "problems": list(node.problems),
        "started_at": iso(node.started_at),
        "heartbeat_at": iso(node.heartbeat_at),
        "heartbeat_age_seconds": round((utcnow() - node.heartbeat_at).total_seconds(), 1),
    }


def _node_line(node: dict[str, Any]) -> str:
    """``  vm  pid 4242, 0.0.0.0:11112, heartbeat 3.1s ago``, and what ails it."""
    listening = node["listening"] or "not listening"
    line = (
        f"  {node['name']:<16} pid {node['pid']}, {listening}, "
        f"heartbeat {node['heartbeat_age_seconds']:g}s ago"
    )
    return line + "".join(f"; {problem}" for problem in node["problems"])
