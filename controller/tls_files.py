"""The PEM files of a TLS channel, checked before anything is served or dialled: a bad file would
otherwise show only as a peer that never connects. One checker for the OpenFlow channel and the
gRPC API, server and client side; each refusal names the option that gave the file."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from twin.state.errors import NdtError


@dataclass(frozen=True)
class TlsOptions:
    """How the command line names the certificate, its key and the CA file (for messages)."""

    cert: str = "--tls-cert"
    key: str = "--tls-key"
    ca: str = "--tls-ca"


def check_tls_files(cert: Path | None, key: Path | None, ca: Path | None, options: TlsOptions = TlsOptions()) -> None:
    """Refuse a certificate and key that are missing, not PEM, encrypted or not a pair, and CA
    certificates that are missing or not PEM (:class:`NdtError`); ``cert`` and ``key`` go together."""
    if (cert is None) != (key is None):
        raise NdtError(f"{options.cert} and {options.key} go together (certificate {cert}, key {key})")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cert is not None:
        def encrypted() -> bytes:
            raise NdtError(f"{options.key} {key} is encrypted: give an unencrypted PEM key (readable by this user only)")

        try:
            context.load_cert_chain(cert, key, password=encrypted)
        except (ssl.SSLError, OSError) as exc:
            raise NdtError(f"{options.cert} {cert} / {options.key} {key}: not a PEM certificate and its private key "
                           f"({_reason(exc)})") from None
    if ca is not None:
        try:
            context.load_verify_locations(ca)
        except (ssl.SSLError, OSError) as exc:
            raise NdtError(f"{options.ca} {ca}: not a PEM CA certificate ({_reason(exc)})") from None


def _reason(exc: ssl.SSLError | OSError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or exc)
