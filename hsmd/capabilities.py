"""What an hsmd client may ask for: shared by hsmd and the lightningd code that grants it.

Kept apart from hsmd.hsmd so that lightningd never imports the module that
reads hsm_secret. The bits are Core Lightning's HSM_PERM_* values.
"""

from __future__ import annotations

import enum


class Capability(enum.IntFlag):
    ECDH = 1
    SIGN_GOSSIP = 2
    SIGN_ONCHAIN_TX = 4
    COMMITMENT_POINT = 8
    SIGN_REMOTE_TX = 16
    SIGN_CLOSING_TX = 32
    MASTER = 1024


# lightningd's own connection: node-level operations and the wallet, never a channel's keys.
MASTER_CAPABILITIES = (
    Capability.MASTER | Capability.ECDH | Capability.SIGN_GOSSIP | Capability.SIGN_ONCHAIN_TX
)
# An openingd: its channel's per-commitment points and the peer's first commitment tx.
OPENINGD_CAPABILITIES = Capability.COMMITMENT_POINT | Capability.SIGN_REMOTE_TX
