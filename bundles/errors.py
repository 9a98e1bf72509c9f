"""Errors raised by the bundles package.

Each derives from appliance.errors.ReckonError, so the CLI prints the message without a
traceback. Messages name the file, archive member or key involved and what to do next.
"""

from appliance.errors import NotFoundError, ReckonError


class KeyringError(ReckonError):
    """The site key or a keyring entry is missing, invalid or cannot be unlocked."""


class BundleError(ReckonError):
    """A bundle cannot be frozen, signed or exported from the given input."""


class IntegrityError(BundleError):
    """A bundle or archive failed verification: a digest, the file set or the signature."""


class ArchiveError(IntegrityError):
    """An archive is malformed or unsafe: traversal, links, duplicates, oversize, truncation."""


class AdapterExportError(BundleError):
    """A peft adapter cannot be converted for llama.cpp (unsupported modules, DoRA, ...)."""


class VersionNotFoundError(NotFoundError):
    """No frozen version matches the given digest or prefix."""
