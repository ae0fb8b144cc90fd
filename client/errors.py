"""What can go wrong when asking for a prediction, and what the command line does about it.

`fatal` errors stop the whole run (no later image can succeed: the server is down, the model is not
served); the others belong to one image and the run goes on with the next.
"""

from __future__ import annotations


class ClientError(Exception):
    """One image could not be classified; the message says why."""

    fatal = False
    exit_code = 1


class ServerUnreachable(ClientError):
    """Nothing answers at the URL (connection refused, unknown host, timeout while connecting)."""

    fatal = True
    exit_code = 3


class ModelNotFound(ClientError):
    """The server answers, but does not serve a model of that name (TorchServe's 404)."""

    fatal = True
    exit_code = 4


class AuthorizationFailed(ClientError):
    """TorchServe's token authorization refused the request (no key, wrong or expired key)."""

    fatal = True
    exit_code = 5


class HTTPError(ClientError):
    """The server answered with an HTTP error (or none in time: status 0), with its message."""

    def __init__(self, status: int, message: str, dropped: bool = False):
        super().__init__(message)
        self.status = status
        self.dropped = dropped  # the server reset or closed the connection: worth a retry, like a busy 503


class LocalModelError(ClientError):
    """`--local`: the export directory cannot be loaded (missing, broken manifest, failed parity)."""

    fatal = True
    exit_code = 4
