"""One HTTP request from the plugin to a tracking server, without MLflow's per-request set-up.

MLflow's ``http_request`` works out headers (about 1 ms of failing imports), proxies and its session
again for every request. For a plain server :class:`Transport` does it once per server and process,
still reading credentials and TLS settings per request; anything special (Databricks, AWS SigV4, auth
plugins, workspaces) goes through MLflow's own ``http_request`` unchanged.
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Mapping
from typing import Any

import attrs
import requests
from requests.utils import get_environ_proxies, get_netrc_auth

from mlflow.tracking.request_header.registry import resolve_request_headers
from mlflow.utils import rest_utils
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import MlflowHostCreds, http_request

__all__ = ["Transport", "is_plain", "send"]


def is_plain(creds: MlflowHostCreds) -> bool:
    """Whether a request with these credentials needs nothing beyond headers, TLS settings and a cert.

    False for the Databricks SDK and OAuth, AWS SigV4, auth plugins (including Kubernetes), and
    requests that MLflow tags with a workspace, org id or traffic id.
    """
    traffic_id = getattr(rest_utils, "_MLFLOW_DATABRICKS_TRAFFIC_ID", None)
    special = (
        creds.use_databricks_sdk,
        creds.aws_sigv4,
        creds.auth,
        creds.client_secret,
        getattr(creds, "workspace_id", None),
        traffic_id is not None and traffic_id.get(),
    )
    if any(special):
        return False
    workspace = getattr(rest_utils, "get_request_workspace", None)
    return workspace is None or not workspace()


@attrs.frozen
class Transport:
    """What every request to one server shares: the session, MLflow's headers, proxies and redirects.

    ``verify`` is the CA bundle named by ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` (or ``True``),
    used when MLflow's own TLS settings leave verification at its default; ``netrc`` is the login
    ``~/.netrc`` holds for the host, used when no MLflow credentials are set. Both are what
    ``requests`` would find in the environment for each request.
    """

    base: str
    session: requests.Session
    headers: Mapping[str, str]
    verify: bool | str
    netrc: tuple[str, str] | None
    allow_redirects: bool

    @classmethod
    def for_host(cls, host: str) -> Transport:
        """Work out the constant parts for ``host`` (a tracking URI's ``scheme://host:port[/path]``)."""
        base = host.rstrip("/")
        session = requests.Session()
        session.trust_env = False  # what it would read per request is read here, once
        session.proxies.update(get_environ_proxies(base))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        redirects = os.environ.get("MLFLOW_ALLOW_HTTP_REDIRECTS", "true").lower() in ("true", "1")
        return cls(
            base=base,
            session=session,
            headers=dict(resolve_request_headers()),
            verify=bundle or True,
            netrc=get_netrc_auth(base),
            allow_redirects=redirects,
        )

    def request(
        self,
        creds: MlflowHostCreds,
        endpoint: str,
        method: str,
        payload: dict[str, Any],
        timeout: tuple[float, float],
    ) -> requests.Response:
        """Send one request with the credentials and TLS settings in ``creds``; no retries.

        ``payload`` is the body as ``requests`` takes it: ``{"params": ...}`` or ``{"json": ...}``.
        """
        headers = dict(self.headers)
        netrc = None
        if creds.username and creds.password:
            login = base64.standard_b64encode(f"{creds.username}:{creds.password}".encode()).decode()
            headers["Authorization"] = f"Basic {login}"
        elif creds.token:
            headers["Authorization"] = f"Bearer {creds.token}"
        else:
            netrc = self.netrc
        verify = creds.verify if creds.verify is not True else self.verify
        return self.session.request(
            method,
            self.base + endpoint,
            headers=headers,
            auth=netrc,
            verify=verify,
            cert=creds.client_cert_path,
            timeout=timeout,
            allow_redirects=self.allow_redirects,
            **payload,
        )


@functools.cache
def _transport(host: str, pid: int) -> Transport:
    """The transport for ``host`` in process ``pid``: a forked child makes its own, not the parent's."""
    return Transport.for_host(host)


def send(
    uri: str, endpoint: str, method: str, body: dict[str, Any], timeout: tuple[float, float]
) -> requests.Response:
    """Send one request to the tracking server at ``uri`` and return the response, whatever its status.

    ``timeout`` is ``(connect, read)`` in seconds. MLflow's ``http_request`` takes one number: it
    gets the larger.

    Plain servers go through the process's :class:`Transport` for the server; the rest through
    MLflow's ``http_request``. Neither retries: the caller decides what is worth repeating.

    Raises:
        requests.RequestException: the request could not be sent or answered (plain servers).
        mlflow.exceptions.MlflowException: the same, from MLflow's ``http_request``.
    """
    creds = get_default_host_creds(uri)
    payload: dict[str, Any] = {"params": body} if method == "GET" else {"json": body}
    if not is_plain(creds):
        response: requests.Response = http_request(
            creds,
            endpoint,
            method,
            max_retries=0,
            backoff_factor=0,
            timeout=max(timeout),
            raise_on_status=False,
            **payload,
        )
        return response
    return _transport(creds.host, os.getpid()).request(creds, endpoint, method, payload, timeout)
