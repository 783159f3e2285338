"""The one PEM checker of the OpenFlow channel and the gRPC API: each bad file refused by name."""

from __future__ import annotations

import pytest

from controller.api.client import ControllerClient
from controller.api.server import _credentials
from controller.launcher import OpenFlowTls
from controller.tls_files import check_tls_files
from tests.unit.test_controller_api import self_signed
from twin.state.errors import NdtError


def encrypted_key(tmp_path) -> None:
    """``locked-key.pem``: the key of ``server.pem`` under a passphrase."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((tmp_path / "server-key.pem").read_bytes(), password=None)
    (tmp_path / "locked-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))


def test_good_files_pass(tmp_path):
    self_signed(tmp_path, "server")
    check_tls_files(tmp_path / "server.pem", tmp_path / "server-key.pem", tmp_path / "server.pem")
    check_tls_files(None, None, tmp_path / "server.pem")


@pytest.mark.parametrize("cert, key, ca, words", [
    ("server.pem", "other-key.pem", None, "--tls-cert .*server.pem / --tls-key .*other-key.pem: not a PEM certificate "
                                          "and its private key"),
    ("server.pem", "locked-key.pem", None, "--tls-key .*locked-key.pem is encrypted: give an unencrypted PEM key"),
    ("junk.pem", "server-key.pem", None, "not a PEM certificate and its private key"),
    ("missing.pem", "server-key.pem", None, r"--tls-cert .*missing.pem .*No such file"),
    (None, None, "junk.pem", "--tls-ca .*junk.pem: not a PEM CA certificate"),
    (None, None, "missing.pem", r"--tls-ca .*missing.pem: not a PEM CA certificate \(No such file"),
])
def test_each_bad_file_is_named(tmp_path, cert, key, ca, words):
    self_signed(tmp_path, "server")
    self_signed(tmp_path, "other")
    encrypted_key(tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(NdtError, match=words):
        check_tls_files(*(None if name is None else tmp_path / name for name in (cert, key, ca)))


def test_the_callers_name_their_own_options(tmp_path):
    self_signed(tmp_path, "server")
    encrypted_key(tmp_path)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(NdtError, match="^--ofp-tls-key .*locked-key.pem is encrypted"):
        OpenFlowTls(tmp_path / "server.pem", tmp_path / "locked-key.pem").check()
    with pytest.raises(NdtError, match="^--ofp-tls-ca .*junk.pem: not a PEM CA certificate"):
        OpenFlowTls(tmp_path / "server.pem", tmp_path / "server-key.pem", tmp_path / "junk.pem").check()
    with pytest.raises(NdtError, match="^--tls-ca .*junk.pem: not a PEM CA certificate"):
        ControllerClient("127.0.0.1:9", ready_s=0.1, tls_ca=tmp_path / "junk.pem")
    with pytest.raises(NdtError, match="^--tls-cert and --tls-key go together"):
        ControllerClient("127.0.0.1:9", ready_s=0.1, tls_ca=tmp_path / "server.pem", tls_cert=tmp_path / "server.pem")
    with pytest.raises(NdtError, match="^--tls-client-ca .*junk.pem: not a PEM CA certificate"):
        _credentials(tmp_path / "server.pem", tmp_path / "server-key.pem", tmp_path / "junk.pem")
    with pytest.raises(NdtError, match="^--tls-key .*locked-key.pem is encrypted"):
        _credentials(tmp_path / "server.pem", tmp_path / "locked-key.pem", None)
