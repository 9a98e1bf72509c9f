"""The tamper-evident audit ledger: entries, Merkle proofs, signed checkpoints, verification.

Library entry point: `Ledger.open(path)`; see audit.ledger. Auditors without this package
use audit/verify_standalone.py on an export.
"""

from audit.ledger import Entry, Ledger, LedgerError
from audit.payloads import KINDS, PayloadError
from audit.verify import Problem, VerifyReport

__all__ = ["Entry", "KINDS", "Ledger", "LedgerError", "PayloadError", "Problem", "VerifyReport"]
