"""Errors that travel to clients.

Domain code raises a :class:`ServiceError` subclass; only ``api/protocol.py`` (through the error
middleware) turns one into a wire response, taking the HTTP status from the botocore model of the
service being called::

    ServiceError                      code = name on the wire (x-amzn-ErrorType)
    ├── InvalidArgumentException      bad input (names the field)
    ├── ResourceNotFoundException
    ├── ResourceInUseException
    ├── ClientLimitExceededException  rate limits, viewer caps
    ├── AccessDeniedException         policy denial (NotAuthorizedException where the model says so)
    ├── NotAuthorizedException
    ├── VersionMismatchException
    ├── NoDataRetentionException
    ├── TagsPerResourceExceededLimitException
    ├── AccountStreamLimitExceededException / AccountChannelLimitExceededException
    ├── ConnectionLimitExceededException
    ├── InvalidEndpointException
    ├── UnsupportedStreamMediaTypeException / MissingCodecPrivateDataException /
    │   InvalidCodecPrivateDataException / InvalidMediaFrameException
    ├── AuthFailure                   SigV4 problems (InvalidSignatureException, ...; 403)
    ├── SerializationException        malformed JSON, wrong content type
    ├── UnknownOperationException     unknown path (404)
    ├── NotImplementedOperation       in a model but not served yet (501)
    └── InternalFailure               anything unexpected (500, no traceback on the wire)
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base class: ``code`` is the wire name, ``status`` the fallback HTTP status."""

    code: ClassVar[str] = "InternalFailure"
    status: ClassVar[int] = 500
    # Wire names that mean the same thing in another model (AccessDenied vs NotAuthorized).
    aliases: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgumentException(ServiceError):
    code = "InvalidArgumentException"
    status = 400


class ResourceNotFoundException(ServiceError):
    code = "ResourceNotFoundException"
    status = 404


class ResourceInUseException(ServiceError):
    code = "ResourceInUseException"
    status = 400


class ClientLimitExceededException(ServiceError):
    code = "ClientLimitExceededException"
    status = 400


class AccessDeniedException(ServiceError):
    code = "AccessDeniedException"
    status = 403
    aliases = ("NotAuthorizedException",)


class NotAuthorizedException(ServiceError):
    code = "NotAuthorizedException"
    status = 401
    aliases = ("AccessDeniedException",)


class VersionMismatchException(ServiceError):
    code = "VersionMismatchException"
    status = 400


class NoDataRetentionException(ServiceError):
    code = "NoDataRetentionException"
    status = 400


class TagsPerResourceExceededLimitException(ServiceError):
    code = "TagsPerResourceExceededLimitException"
    status = 400


class AccountStreamLimitExceededException(ServiceError):
    code = "AccountStreamLimitExceededException"
    status = 400


class AccountChannelLimitExceededException(ServiceError):
    code = "AccountChannelLimitExceededException"
    status = 400


class ConnectionLimitExceededException(ServiceError):
    code = "ConnectionLimitExceededException"
    status = 400


class InvalidEndpointException(ServiceError):
    code = "InvalidEndpointException"
    status = 400


class UnsupportedStreamMediaTypeException(ServiceError):
    code = "UnsupportedStreamMediaTypeException"
    status = 400


class MissingCodecPrivateDataException(ServiceError):
    code = "MissingCodecPrivateDataException"
    status = 400


class InvalidCodecPrivateDataException(ServiceError):
    code = "InvalidCodecPrivateDataException"
    status = 400


class InvalidMediaFrameException(ServiceError):
    code = "InvalidMediaFrameException"
    status = 400


class InvalidClientException(ServiceError):
    code = "InvalidClientException"
    status = 400


class AuthFailure(ServiceError):
    """A request whose SigV4 authentication failed. ``code`` varies with the cause."""

    status = 403

    def __init__(self, message: str, code: str = "InvalidSignatureException") -> None:
        super().__init__(message)
        self.auth_code = code


class SerializationException(ServiceError):
    code = "SerializationException"
    status = 400


class UnknownOperationException(ServiceError):
    code = "UnknownOperationException"
    status = 404


class NotImplementedOperation(ServiceError):
    code = "NotImplementedException"
    status = 501


class InternalFailure(ServiceError):
    code = "InternalFailure"
    status = 500
