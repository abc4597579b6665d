"""Text from files and peers, made safe for one log line or one sidecar line.

Patient IDs, AE titles, file names and parser messages are attacker text: a
CR or LF in them could forge a log line or split a ``.reason`` sidecar.
Control characters are escaped as ``\\xNN`` (backslash doubled first, so the
escaping is unambiguous); everything printable is kept.
"""

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: object) -> str:
    """``text`` as one line: backslashes doubled, control characters as ``\\xNN``."""
    value = str(text)
    if not _CONTROL.search(value) and "\\" not in value:
        return value
    value = value.replace("\\", "\\\\")
    return _CONTROL.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}"
        ),
        value,
    )
