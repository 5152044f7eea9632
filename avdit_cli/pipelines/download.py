"""`avdit download`: fetch the weights a preset needs (or the groups named by --only), or check what is there.

Plain functions: no Typer or Rich here; progress goes through a callback that receives one line per event.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from avdit_cli import hub
from avdit_cli.config import Config
from avdit_cli.errors import ConfigError
from avdit_cli.hub import WeightsEntry, WeightsGroup

Progress = Callable[[str], None]


@dataclass(frozen=True)
class WeightsStatus:
    """One row of the summary table."""

    key: str
    title: str
    group: str
    repo: str
    revision: str  # the pinned revision, or "main (not pinned)"
    commit: str | None  # the snapshot commit found in the cache (Hub entries)
    size: int | None  # bytes on disk (present) or expected (missing, where known)
    licence: str
    location: str | None  # the folder holding the files, None when missing
    status: str  # "downloaded", "cached", "present", "missing"
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status != "missing"


def parse_only(only: str | Sequence[str] | None) -> list[WeightsGroup] | None:
    """``"backbone,video-vae"`` (or a list of such strings) -> groups; None or empty -> None (the default)."""
    if not only:
        return None
    items = [only] if isinstance(only, str) else list(only)
    names = [p.strip() for item in items for p in item.split(",") if p.strip()]
    allowed = [g.value for g in WeightsGroup]
    groups: list[WeightsGroup] = []
    for name in names:
        if name not in allowed:
            raise ConfigError(f"--only: unknown weights {name!r}; choose from {', '.join(allowed)}")
        if WeightsGroup(name) not in groups:
            groups.append(WeightsGroup(name))
    return groups or None


def default_groups(cfg: Config) -> list[WeightsGroup]:
    """The preset's own weights plus the eval extractors. A preset that needs no weights (tiny: pixel codecs,
    Griffin-Lim and a backbone the demo makes) downloads nothing unless asked with ``--only eval``."""
    groups = hub.required_groups(cfg)
    return [*groups, WeightsGroup.EVAL] if groups else []


def select(cfg: Config, only: Iterable[WeightsGroup | str] | None = None,
           revision: str | None = None) -> list[WeightsEntry]:
    """The entries to fetch. ``revision`` replaces the pinned revision of the selected Hub entries (a 40-hex
    commit counts as pinned); loaders look for the table's revision, so this is for fetching another one."""
    groups = list(only) if only else default_groups(cfg)
    entries = hub.entries_for(cfg, groups)
    if revision:
        pinned = re.fullmatch(r"[0-9a-f]{40}", revision) is not None
        entries = [dataclasses.replace(e, revision=revision, pinned=pinned) if e.is_hub else e for e in entries]
    return entries


def _revision(entry: WeightsEntry) -> str:
    return entry.revision if entry.pinned else f"{entry.revision} (not pinned)"


def _status(entry: WeightsEntry, status: str, local: hub.LocalWeights | None) -> WeightsStatus:
    missing: tuple[str, ...] = ()
    if local is None:
        missing = tuple(entry.repo_path(r.name) for r in entry.files if hub.local_file(entry, r) is None)
    return WeightsStatus(
        key=entry.key, title=entry.title, group=entry.group.value, repo=entry.display_repo,
        revision=_revision(entry), commit=local.commit if local else None,
        size=local.size if local else entry.expected_size, licence=entry.licence,
        location=str(local.folder) if local else None, status=status, missing=missing,
    )


def check(cfg: Config, only: Iterable[WeightsGroup | str] | None = None,
          revision: str | None = None) -> list[WeightsStatus]:
    """What is present and what is missing, from the local cache only (no network). Sizes are checked where
    the table knows them; a file of the wrong size counts as missing."""
    rows = []
    for entry in select(cfg, only, revision):
        local = hub.find_local(entry)
        if local is not None and any(hub.check_file(local.paths[r.name], r, full=False) for r in entry.files):
            local = None
        rows.append(_status(entry, "present" if local else "missing", local))
    return rows


def download(
    cfg: Config,
    only: Iterable[WeightsGroup | str] | None = None,
    *,
    revision: str | None = None,
    progress: Progress | None = None,
) -> list[WeightsStatus]:
    """Fetch every file of the selected entries that is not already cached and verified; verify them all.

    Files already in the cache are hashed again (never re-downloaded when they pass); a file that fails its
    check is removed and a :class:`WeightsError` says to rerun.
    """
    say = progress or (lambda _msg: None)
    rows = []
    for entry in select(cfg, only, revision):
        any_downloaded = False
        for remote in entry.files:
            say(f"{entry.title}: {entry.repo_path(remote.name)} from {entry.display_repo}@{entry.revision}")
            path, downloaded = hub.fetch_file(entry, remote, preset=cfg.name)
            any_downloaded |= downloaded
            say(f"  {'downloaded' if downloaded else 'cached'}: {path}")
        local = hub.require_local(entry, cfg.name)
        rows.append(_status(entry, "downloaded" if any_downloaded else "cached", local))
    return rows
