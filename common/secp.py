"""Point python-bitcointx at the libsecp256k1 that coincurve ships.

python-bitcointx loads libsecp256k1 through ctypes and finds none on a stock
Debian machine; coincurve's cffi module carries a full, exported copy of the
library, so both libraries share one secp256k1 and nothing needs apt-get.
Import this module before any bitcointx key operation.
"""

from __future__ import annotations

import glob
import os

import bitcointx
import coincurve


def _coincurve_library() -> str:
    here = os.path.dirname(coincurve.__file__)
    found = glob.glob(os.path.join(here, "_libsecp256k1*.so"))
    if not found:
        raise ImportError(f"coincurve's libsecp256k1 not found in {here}")
    return found[0]


bitcointx.set_custom_secp256k1_path(_coincurve_library())
