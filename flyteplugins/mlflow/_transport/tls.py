"""TLS failures told apart from outages: what the request loop (:mod:`.rest`) needs to know about them.

* A server certificate that does not verify (an unknown CA, a self-signed certificate, a name that
  does not match) stays that way however long the plugin waits, so it is a definitive error, whether
  the server was reached before or not: one attempt, and a message that says what to set.
* A server that closes a TLS connection during or just after the handshake, without answering, is
  what uvicorn does under mutual TLS to a client that shows no certificate (``--ssl-cert-reqs 2``).
  Requests reports it as a dropped connection, like any other; on a server this process has never
  reached, the message adds that the server may want a client certificate.

Pure functions of an exception (and a URI): nothing here sends a request or reads the environment.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from typing import Final
from urllib.parse import urlsplit

import urllib3

__all__ = [
    "CA_BUNDLE",
    "CLIENT_CERT",
    "INSECURE",
    "client_certificate_hint",
    "closed_in_handshake",
    "untrusted_certificate",
    "untrusted_message",
]

CA_BUNDLE: Final = "MLFLOW_TRACKING_SERVER_CERT_PATH"
INSECURE: Final = "MLFLOW_TRACKING_INSECURE_TLS"
CLIENT_CERT: Final = "MLFLOW_TRACKING_CLIENT_CERT_PATH"

_VERIFY_FAILED: Final = "CERTIFICATE_VERIFY_FAILED"
# OpenSSL's names for the alerts a server sends when it refuses the client's certificate or its lack of one.
_CLIENT_CERT_ALERTS: Final = (
    "CERTIFICATE_REQUIRED",
    "ALERT_HANDSHAKE_FAILURE",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and its causes: ``__cause__``, ``__context__``, and urllib3's ``MaxRetryError.reason``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        reason = current.reason if isinstance(current, urllib3.exceptions.MaxRetryError) else None
        current = reason or current.__cause__ or current.__context__


def untrusted_certificate(error: BaseException) -> bool:
    """Whether a request failed because the server's certificate did not verify.

    True for ``ssl.SSLCertVerificationError`` anywhere in the chain (as ``requests`` raises it, in a
    ``requests.exceptions.SSLError``), and for an error whose text carries OpenSSL's
    ``CERTIFICATE_VERIFY_FAILED`` (as MLflow's own ``http_request`` words it).
    """
    return any(
        isinstance(seen, ssl.SSLCertVerificationError) or _VERIFY_FAILED in str(seen)
        for seen in _chain(error)
    )


def _verify_reason(error: BaseException) -> str:
    """OpenSSL's reason for refusing the certificate (``self-signed certificate in certificate chain``)."""
    for seen in _chain(error):
        if isinstance(seen, ssl.SSLCertVerificationError) and seen.verify_message:
            return str(seen.verify_message)
    return "certificate verify failed"


def untrusted_message(where: str, action: str, error: BaseException, attempts: int, seconds: float) -> str:
    """The error for a server certificate that does not verify: the server, what failed, what to set.

    ``where`` names the server (``host:port``), ``action`` what the plugin was doing (``create a
    run``), ``attempts`` and ``seconds`` what it took.
    """
    plural = "s" if attempts > 1 else ""
    return (
        f"the MLflow tracking server at {where} could not be trusted to {action}: the server's certificate "
        f"is not trusted ({_verify_reason(error)}); not retried, since waiting does not change a "
        f"certificate (after {attempts} attempt{plural} in {seconds:.1f}s). Set {CA_BUNDLE} to a CA "
        f"bundle (PEM) with the CA that signed the server's certificate, or, for a test server only, "
        f"{INSECURE}=true to skip the check"
    )


def closed_in_handshake(error: BaseException) -> bool:
    """Whether the server ended the connection without an answer, or with a TLS alert about the
    client's certificate: what a server that wants a client certificate does to a client without one."""
    for seen in _chain(error):
        if isinstance(seen, http.client.RemoteDisconnected | ConnectionResetError):
            return True
        if isinstance(seen, ssl.SSLError) and any(alert in str(seen) for alert in _CLIENT_CERT_ALERTS):
            return True
    return False


def client_certificate_hint(uri: str, error: BaseException) -> str:
    """A sentence to add to the error of a request to an ``https`` server this process has never
    reached, when the server closed the connection in the handshake (:func:`closed_in_handshake`);
    empty otherwise. The caller knows whether the server was reached."""
    if urlsplit(uri).scheme.lower() != "https" or not closed_in_handshake(error):
        return ""
    return (
        ". The server closed the TLS connection without an answer: it may require a client certificate. "
        f"Set {CLIENT_CERT} to a PEM file with a certificate the server trusts and its private key"
    )
