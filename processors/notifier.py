"""Tell each AE's processor about the instances intake recorded for it (observer)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ledger.records import InstanceRecord
from processors.base import InstanceListener

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, listeners: Mapping[str, InstanceListener]) -> None:
        self.listeners = listeners  # called AE -> its processor

    def __call__(self, instances: list[InstanceRecord]) -> None:
        for instance in instances:
            listener = self.listeners.get(instance.called_ae or "")
            if listener is None:
                continue  # no processor: the instance stays received, a plain receiver
            try:
                listener.instance_stored(instance)
            except Exception:  # the grouper's tick catches up with what is missed here
                log.exception("processor failed on instance %d", instance.id)
