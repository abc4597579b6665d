"""What a destination's status for one file means: delivered, worth another attempt, refused.

One rule for both ways of sending (PS3.4 Annex B for C-STORE; PS3.18 Annex I
for STOW-RS, whose FailureReason and WarningReason values are the same code
space): Success and the warnings 0xB000, 0xB006, 0xB007 are delivered;
0xA9xx (data set does not match the SOP class), 0xCxxx (cannot understand),
0x0122 (SOP class not supported) and 0x0124 (not authorised) are refused,
since sending the same bytes again cannot change them; anything else (0xA7xx
out of resources, 0x0110 processing failure, an unknown status) is worth
another attempt.
"""

from ledger.records import ItemOutcome

DELIVERED = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
# Besides 0xA9xx and 0xCxxx, statuses a resend cannot change (PS3.7 C.4).
_REFUSED_CODES = frozenset({0x0122, 0x0124})


def status_outcome(item_id: int, status: int) -> ItemOutcome:
    """The outcome ``status`` means for a file (the classes in the module docstring)."""
    if status in DELIVERED:
        return ItemOutcome(item_id, status, None)
    refused = status & 0xF000 == 0xC000 or status & 0xFF00 == 0xA900 or status in _REFUSED_CODES
    return ItemOutcome(item_id, status, f"destination answered 0x{status:04X}", retry=not refused)
