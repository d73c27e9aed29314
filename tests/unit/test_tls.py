"""The pure parts of #25's first step: the PKI's names as a real TLS peer sees them, the listen address
checked at start, and the rule that binds a switch's certificate to its site."""

from __future__ import annotations

import socket
import ssl
import threading
from types import SimpleNamespace

import pytest

from cloudweave import pki
from cloudweave.config import load_model
from controller.core import _certificate_refusal
from controller.launch import ListenError, check_listen, listen_args
from testkit.harness import ROOT


def handshake_identity(d: str, server: pki.Issued, client: pki.Issued) -> tuple:
    """A real mutual-TLS handshake on loopback; the client's identity as the server reads it."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(server.cert, server.key)
    sctx.load_verify_locations(server.ca)
    sctx.verify_mode = ssl.CERT_REQUIRED
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.load_verify_locations(client.ca)
    cctx.load_cert_chain(client.cert, client.key)
    listener = socket.create_server(("127.0.0.1", 0))
    got = {}

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with sctx.wrap_socket(conn, server_side=True) as tls:
                got["cert"] = tls.getpeercert()
        except ssl.SSLError as exc:
            got["error"] = exc

    t = threading.Thread(target=serve)
    t.start()
    try:
        with socket.create_connection(listener.getsockname()) as raw, cctx.wrap_socket(raw) as s:
            s.recv(1)
    except (ssl.SSLError, OSError):
        pass
    t.join(5)
    listener.close()
    return pki.peer_identity(got.get("cert")) if "cert" in got else ("refused", got.get("error"))


def test_a_site_certificate_names_its_site_and_another_cas_is_refused(tmp_path):
    d = str(tmp_path / "pki")
    pki.init(d)
    ctl, east = pki.issue(d, "ctl", "replica"), pki.issue(d, "east", "site")
    assert handshake_identity(d, ctl, east) == ("site", frozenset({"east"}))
    other = str(tmp_path / "other")
    pki.init(other)
    stranger = pki.issue(other, "east", "site")
    kind, _ = handshake_identity(d, ctl, pki.Issued(stranger.key, stranger.cert, ctl.ca))
    assert kind == "refused"
    with pytest.raises(pki.PkiError, match="already holds a CA"):
        pki.init(d)
    with pytest.raises(pki.PkiError, match="kind 'switch'"):
        pki.issue(d, "east", "switch")
    with pytest.raises(pki.PkiError, match="holds no CA"):
        pki.issue(str(tmp_path / "none"), "east", "site")
    assert oct(__import__("os").stat(east.key).st_mode & 0o777) == "0o600"


def test_a_switchs_certificate_must_be_its_sites():
    model = load_model(f"{ROOT}/topologies/nat.yaml")[0]
    east = model.site("east")

    def dp(cert):
        return SimpleNamespace(socket=SimpleNamespace(getpeercert=lambda: cert))

    def cert(kind, name):
        return {"subject": ((("organizationalUnitName", kind),), (("commonName", name),)),
                "subjectAltName": (("DNS", name),)}

    assert _certificate_refusal(dp(cert("site", "east")), east) is None
    assert _certificate_refusal(SimpleNamespace(socket=object()), east) is None  # not TLS: the dpid rule only
    assert _certificate_refusal(dp(cert("site", "west")), east) == \
        "it announces site east's dpid but presents a site certificate for west"
    assert _certificate_refusal(dp(cert("replica", "east")), east) == \
        "it announces site east's dpid but presents a replica certificate for east"
    assert _certificate_refusal(dp({}), east) == "it announces site east's dpid but presents no certificate"


def test_a_listen_address_is_checked_at_start(tmp_path, caplog):
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(ListenError, match="unknown scheme 'ssl6'"):
        check_listen("ssl6:1.2.3.4:6653")
    with pytest.raises(ListenError, match="unknown scheme '127.0.0.1'"):
        check_listen("127.0.0.1:6653")
    with pytest.raises(ListenError, match="TLS needs --certificate, --ca-cert"):
        check_listen("ssl:10.0.0.1:6653", str(key))
    with pytest.raises(ListenError, match="cannot read /nonexistent"):
        check_listen("ssl:10.0.0.1:6653", str(key), str(key), "/nonexistent")
    with pytest.raises(ListenError, match="TLS needs --ca-cert"):
        check_listen("tcp:127.0.0.1:6653", str(key), str(key))
    with pytest.raises(ListenError, match="the store's ssl: remotes needs --private-key"):
        check_listen("tcp:127.0.0.1:6653", store="ssl:10.0.0.1:6641")
    check_listen("tcp:127.0.0.1:6653", str(key), str(key), str(key))  # for sites' ovsdb: ssl:
    with pytest.raises(ListenError, match="'66x' is not a port"):
        check_listen("tcp:127.0.0.1:66x")
    check_listen("tcp:127.0.0.1:6653")
    assert "cleartext" not in caplog.text
    check_listen("tcp:0.0.0.0:6653")
    assert "OpenFlow in cleartext on tcp:0.0.0.0:6653" in caplog.text
    assert listen_args("ssl:10.0.0.1:6653", ("k", "c", "a")) == [
        "--ofp-listen-host", "10.0.0.1", "--ofp-ssl-listen-port", "6653", "--ctl-privkey", "k", "--ctl-cert", "c",
        "--ca-certs", "a"]


def test_a_tls_connection_whose_peer_left_is_gone_without_reading_it(tmp_path):
    """controller.peer_gone peeks at the wire under TLS too (an SSLSocket refuses recv flags): a switch that
    restarted over TLS is not refused as a duplicate of its own dead connection."""
    from controller.peer_gone import peer_gone

    d = str(tmp_path / "pki")
    pki.init(d)
    ctl = pki.issue(d, "ctl", "replica")
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(ctl.cert, ctl.key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.load_verify_locations(ctl.ca)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    done = {}
    t = threading.Thread(target=lambda: done.update(s=sctx.wrap_socket(conn, server_side=True)))
    t.start()
    tls_client = cctx.wrap_socket(client)
    t.join(5)
    server_side = done["s"]
    server_side.settimeout(5.0)
    dp = SimpleNamespace(is_active=True, socket=server_side)
    assert not peer_gone(dp)
    tls_client.sendall(b"x")
    assert not peer_gone(dp)  # a record to read: alive
    assert server_side.recv(1) == b"x"
    tls_client.close()
    assert peer_gone(dp)
    server_side.close()
    listener.close()
