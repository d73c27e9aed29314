"""The files in force: the first load, a reload when an edit settles (controller.watch) or SIGHUP asks, and
the store's policy when a replica is told of a new version. A file that does not load changes nothing."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from typing import Any

from cloudweave.config import ConfigError, LoadCache, load_model_cached
from cloudweave.config.model import Model
from controller.changes import describe
from controller.keeper import NOTHING, Reply, change
from controller.watch import ReloadRequests

LOG = logging.getLogger("cloudweave")


class ReloadKeeper:
    """`config`: the main file; `reloads`: the flag file events and SIGHUP raise (alone; a replica is told
    of the store's versions instead, `policy_stored`)."""

    def __init__(self, config: str, metrics: Any, reloads: ReloadRequests, use_inotify: bool, follow_files: bool):
        self.config, self.metrics, self.reloads = config, metrics, reloads
        self.use_inotify, self.follow_files = use_inotify, follow_files
        self.cache = LoadCache()  # kept for good: a reload parses only what was edited

    def first(self) -> Model:
        """The model to start with (ConfigError: the controller does not start on a bad file)."""
        model, warnings = load_model_cached(self.config, self.cache)
        for w in warnings:
            LOG.warning("%s", w)
        return model

    def tick(self, pub: Any) -> Reply:
        if self.follow_files and not self.use_inotify:
            self.reloads.poll_mtimes()
        if not self.reloads.due():
            return NOTHING
        reply = self.reload(pub)
        if self.reloads.take_resync():
            LOG.info("SIGHUP: reading every switch back (%d connected)", len(pub.switches))
            return replace(reply, resync=True)
        return reply

    def policy_stored(self, path: str, pub: Any) -> Reply:
        """A replica's store holds a new policy, written out to `path` (its main file's name may differ)."""
        return self.reload(pub, path)

    def reload(self, pub: Any, path: str | None = None) -> Reply:
        """Load the files again (`path`: another main file, kept once in force); the difference, or nothing
        if they are invalid."""
        started = time.monotonic()
        config = path or self.config
        try:
            model, warnings = load_model_cached(config, self.cache)
        except ConfigError as exc:
            for p in exc.problems:
                LOG.error("%s", p)
            LOG.error("reload rejected: %d problem(s); the running configuration stays in force", exc.total)
            return self._rejected()
        old = pub.state.model
        if model is old:
            LOG.info("reload: no change to the files")
            return Reply(then=lambda committed: self._applied(started, model, config))
        if old.sites and not model.sites:
            LOG.error("reload rejected: %s defines no sites (emptied, or still being written?); the running "
                      "configuration stays in force", config)
            return self._rejected()
        for w in warnings:
            LOG.warning("%s", w)
        LOG.info("reload: %s", describe(old, model))

        def then(committed: bool) -> None:
            if committed:
                self._applied(started, model, config)
            else:
                self.metrics.reloads.labels("rejected").inc()

        return change("reload", then, model=model)

    def _rejected(self) -> Reply:
        self.metrics.reloads.labels("rejected").inc()
        return Reply(refused=True)

    def _applied(self, started: float, model: Model, config: str) -> None:
        self.config = config
        if self.follow_files and {os.path.realpath(f) for f in model.files} != self.reloads.files:
            self.reloads.watch(model.files, use_inotify=self.use_inotify)
        self.metrics.reloads.labels("applied").inc()
        LOG.info("reload applied in %.0f ms", (time.monotonic() - started) * 1000)
