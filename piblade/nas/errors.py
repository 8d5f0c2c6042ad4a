"""What can go wrong talking to the NAS, as errors a user can act on.

The SMB seam (:mod:`piblade.nas.smb`) translates smbprotocol's exceptions into
these, with ``raise … from exc``; nothing above it sees an smbprotocol type.
Each carries a hint that says what to do next.

    PibladeError
    └── NasError                  the NAS cannot be used as asked (also: no NAS configured)
        ├── NasUnreachable        nothing answers at the address, or it is not an SMB server
        ├── NasAuthFailed         the server refused the user name or password
        ├── ShareNotFound         the server has no share of that name
        ├── EncryptionUnavailable encryption was required but the server cannot do it
        ├── RemoteNotFound        no such file or directory on the share
        ├── RemoteExists          the target exists and is in the way (e.g. a file where a directory goes)
        ├── NasDiskFull           the NAS's disk is full
        ├── NasPermissionDenied   the share refused the operation
        └── PathOutsideShare      a path climbs out of the share ('..', absolute)
"""

from __future__ import annotations

from piblade.errors import PibladeError


class NasError(PibladeError):
    """Base of every NAS error."""


class NasUnreachable(NasError):
    pass


class NasAuthFailed(NasError):
    pass


class ShareNotFound(NasError):
    pass


class EncryptionUnavailable(NasError):
    pass


class RemoteNotFound(NasError):
    pass


class RemoteExists(NasError):
    pass


class NasDiskFull(NasError):
    pass


class NasPermissionDenied(NasError):
    pass


class PathOutsideShare(NasError):
    pass
