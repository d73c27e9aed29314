"""What the subcommands share."""

from __future__ import annotations

import argparse
import sys

from cloudweave.config import ConfigError, load_model
from cloudweave.config.model import Model
from cloudweave.pki import PkiError, tls_files
from cloudweave.store.client import StoreUnavailable, use_tls


def load_reported(path: str) -> tuple[Model | None, int]:
    """The model of `path`, its warnings printed; or None and exit code 1, each problem printed (file:line:col)."""
    try:
        model, warnings = load_model(path)
    except ConfigError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        print(f"{path}: {exc.total} problem(s)", file=sys.stderr)
        return None, 1
    for w in warnings:
        print(w, file=sys.stderr)
    return model, 0


def add_store_tls(p: argparse.ArgumentParser) -> None:
    """The options a store client needs for ssl: remotes: its key, certificate and the CA."""
    p.add_argument("--private-key", default=None, help="with ssl: store remotes: your key (PEM)")
    p.add_argument("--certificate", default=None,
                   help="with ssl: store remotes: your certificate; its name is who the store knows you as")
    p.add_argument("--ca-cert", default=None, help="with ssl: store remotes: the CA that signs the store's members")


def use_store_tls(args: argparse.Namespace) -> str | None:
    """Give this process the TLS files of `args` (add_store_tls); the certificate's name, or None without."""
    try:
        files = tls_files(args.private_key, args.certificate, args.ca_cert)
        return use_tls(*files) if files else None
    except PkiError as exc:
        raise StoreUnavailable(str(exc)) from None


def ovsdb_client_tls(args: argparse.Namespace) -> list[str]:
    """The same files as ovsdb-client's options."""
    if not args.private_key:
        return []
    return ["-p", args.private_key, "-c", args.certificate, "-C", args.ca_cert]
