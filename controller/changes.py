"""Say in one line what a reload changes in the model, for the log."""

from __future__ import annotations

from cloudweave.config.model import Model


def _by_name(model: Model, key: str) -> dict:
    if key == "endpoints":
        return model._endpoints  # the model's own index, built once
    return {x.name: x for x in getattr(model, key)}


def describe(old: Model | None, new: Model) -> str:
    if old is None:
        return (f"{len(new.sites)} sites, {len(new.links)} links, {len(new.segments)} segments, "
                f"{len(new.endpoints)} endpoints")
    parts = []
    for what, key in (("site", "sites"), ("segment", "segments"), ("endpoint", "endpoints"), ("route", "routes"),
                      ("security group", "security_groups")):
        before, after = _by_name(old, key), _by_name(new, key)
        added = sorted(after.keys() - before.keys())
        removed = sorted(before.keys() - after.keys())
        changed = sorted(n for n, x in after.items() if n in before and before[n] is not x and before[n] != x)
        for verb, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                parts.append(f"{what}s {verb}: {', '.join(names)}")
    before_links = {link.sites: link for link in old.links}
    after_links = {link.sites: link for link in new.links}
    for verb, keys in (("added", after_links.keys() - before_links.keys()),
                       ("removed", before_links.keys() - after_links.keys()),
                       ("changed", {k for k in before_links.keys() & after_links.keys()
                                    if before_links[k] != after_links[k]})):
        if keys:
            parts.append(f"links {verb}: {', '.join('-'.join(k) for k in sorted(keys))}")
    return "; ".join(parts) or "no change to the model"

