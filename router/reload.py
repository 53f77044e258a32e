"""What a config reload (SIGHUP, `systemctl reload router`) may change while the daemon runs.

Functions, event source mappings and the progress limits are applied live by the mapping
supervisor. Connections and identity are not: the HTTP listener, the Kafka, MQTT and S3 clients,
the state directory, the region and account baked into every ARN and event. A reload that changes
one of those applies the rest and says, per section, that the change waits for a restart, rather
than refusing everything or half-applying a new broker address to some clients and not others.

A mapping whose new version cannot run with the sections the daemon is running with (a new webhook
mapping while the running daemon has no `http.webhook_token`, a kafka:// destination without a
kafka section) is held back: its old version stays (or it is not created), and the reason is
logged with the field path. A file that does not validate changes nothing at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.config import Config, mapping_problems

# Applied live; every other top-level section needs a restart.
LIVE_SECTIONS = ("functions", "event_source_mappings", "http_routes", "stall_timeout_seconds", "stall_exit_seconds",
                 "shutdown_timeout_seconds")


@dataclass(frozen=True)
class ReloadPlan:
    config: Config  # what the daemon runs with from now on
    needs_restart: list[str] = field(default_factory=list)  # top-level sections that changed
    held_back: dict[str, list[str]] = field(default_factory=dict)  # mapping -> why not applied


def plan_reload(running: Config, loaded: Config) -> ReloadPlan:
    """The live part of `loaded` on top of the restart-only part of `running`."""
    restart_only = [name for name in Config.model_fields if name not in LIVE_SECTIONS]
    needs_restart = [name for name in restart_only if getattr(running, name) != getattr(loaded, name)]
    live = {name: getattr(loaded, name) for name in LIVE_SECTIONS}
    mappings = dict(loaded.event_source_mappings)

    def with_mappings() -> Config:
        return running.model_copy(update={**live, "event_source_mappings": dict(mappings)})

    held_back: dict[str, list[str]] = {}
    for name in list(mappings):
        problems = mapping_problems(with_mappings(), name)
        if not problems:
            continue
        held_back[name] = problems
        previous = running.event_source_mappings.get(name)
        if previous is None:
            del mappings[name]
            continue
        mappings[name] = previous
        if mapping_problems(with_mappings(), name):  # e.g. its function is gone
            del mappings[name]
    return ReloadPlan(with_mappings(), needs_restart, held_back)
