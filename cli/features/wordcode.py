"""Short linking codes authenticated with a PAKE (SPAKE2, as magic-wormhole does).

A word code is ``NODE-NUMBER-WORD-WORD-WORD`` (e.g. ``n1-4821-lamp-mint-moss``):
``NODE`` the id of the node holding the mailbox, ``NUMBER`` the mailbox's 2-byte id
(``link_open {short: true}``) and three words from :data:`WORDS` (256 words: 24 bits
chosen by the new device, never sent to a relay). The words are the SPAKE2 password
(``spake2`` package; the new device is side A, the primary side B); the number and
node are not secret (the relay knows them) and the new device's SPAKE2 message goes
in ``link_open`` before they are known.

Why it keeps the guarantees of the long code (docs/protocol.md, "Linking with a word
code"): SPAKE2 gives both sides the same 32-byte key only if both used the same
password, and a relay that sees the exchange learns nothing it could test guesses
against offline. A relay (or anyone who guesses the mailbox number) that plays one
side gets one online guess per code, 1 in 2**24, and a wrong guess makes the link fail
(the mailbox is single use). From the key come two XSalsa20-Poly1305 keys (pynacl
``SecretBox``), one per direction (:func:`session_keys`): the new device's keys and
name reach the primary under one (so the relay cannot swap them: the primary publishes
them only after they decrypted), and the account material reaches the new device under
the other (so only the primary that read the code could have made it). When the
user declines the device shown, the primary seals :data:`DECLINED` under that key
instead: the waiting device learns it was declined, and a relay can neither forge that
(only drop it: denial of service) nor pass it off as material.

Pure functions; no I/O.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import msgpack
import nacl.exceptions
import nacl.secret
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.spake2 import SPAKEError

from cli.features.linkcode import LinkCodeError
from relay.protocol.codec import refuse_ext

__all__ = ["DECLINED", "WORDS", "Pake", "WordCode", "is_word_code", "new_words", "open_box",
           "pake_info",
           "password", "read_pake_info",
           "seal_box", "session_keys"]

WORDS = tuple("""
    able acid aged also area army away baby back ball band bank base bath bear beat bell
    belt bird blue boat body bone book boot boss bowl bulk burn bush busy cafe cage cake
    calm camp card care cart case cash cave cell chat chef chip city clay clip club coal
    coat code coin cold cook cool copy corn cost crew crop cube cure dark data dawn deal
    deck deep deer desk dial dice diet disk dock door dose dove down draw drum duck dust
    duty earn east easy echo edge epic even exam exit face fact fair farm fast fern file
    film fire firm fish flag flat flow foam fold folk food foot fork form fort fuel full
    game gate gear gift girl glad glow goal gold golf good gray grid grow gulf hair half
    hall hand harp hawk heat herb hero hill hint hole home hook horn host hour huge idea
    inch iron item jazz jeep join joke jump jury keen kept kick kind king kite knee knot
    lake lamp land lane last lava lawn leaf lean left lens life lift lily lime line link
    lion list loaf lock loft logo long loop lord love luck lung mail main mall malt mane
    many mask meal meat mild milk mill mind mint mist mode moon moss most moth move much
    mule myth nail name navy neat neck nest news next nice nine node noon nose note oak
    oath obey odd oven over pace pack page pain pair palm park part pass path peak pear
    pick
""".split())
"""256 short words; three of them are the secret part of a code."""
N_WORDS = 3
DECLINED = b"wa-link-declined"
"""What the primary seals (primary -> new device key) instead of the material when its
user declines the device: never a msgpack map, so never taken for material."""
ID_A, ID_B = b"wa-link-new-device", b"wa-link-primary"
SHORT_ID_SIZE = 2


def is_word_code(text: str) -> bool:
    """Whether ``text`` looks like a word code (not a ``wa1-`` code)."""
    parts = text.strip().lower().rsplit("-", N_WORDS + 1)
    return len(parts) == N_WORDS + 2 and parts[1].isdigit() and all(
        p in WORDS for p in parts[2:])


@dataclass(frozen=True, slots=True)
class WordCode:
    """A parsed word code: ``node_id``, the 2-byte ``mailbox_id`` and the ``words``."""

    node_id: str
    mailbox_id: bytes
    words: tuple[str, ...]


    def encode(self) -> str:
        """``NODE-NUMBER-WORD-WORD-WORD``."""
        return "-".join([self.node_id, str(int.from_bytes(self.mailbox_id, "big")), *self.words])

    @classmethod
    def decode(cls, text: str) -> WordCode:
        """Parse a code as printed by ``wa-cli link --short`` (blanks and case ignored).

        Raises:
            LinkCodeError: not ``NODE-NUMBER-WORD-WORD-WORD`` with known words.
        """
        parts = text.strip().lower().rsplit("-", N_WORDS + 1)
        if not is_word_code(text) or not parts[0] or int(parts[1]) >= 1 << (8 * SHORT_ID_SIZE):
            raise LinkCodeError("a word code looks like n1-4821-lamp-mint-moss (copy it from "
                                "'wa-cli link --short')")
        return cls(parts[0], int(parts[1]).to_bytes(SHORT_ID_SIZE, "big"), tuple(parts[2:]))

    @property
    def password(self) -> bytes:
        """The SPAKE2 password: the words."""
        return password(self.words)


def new_words() -> tuple[str, ...]:
    """Three random words from :data:`WORDS`."""
    return tuple(secrets.choice(WORDS) for _ in range(N_WORDS))


def password(words: tuple[str, ...]) -> bytes:
    """The SPAKE2 password of a code's words."""
    return "-".join(words).encode()


class Pake:
    """One side of the SPAKE2 exchange for the code's ``words`` (``primary``: side B, else A)."""

    def __init__(self, words: tuple[str, ...], *, primary: bool) -> None:
        cls = SPAKE2_B if primary else SPAKE2_A
        self._spake = cls(password(words), idA=ID_A, idB=ID_B)
        self.message = self._spake.start()
        """This side's message, to send to the other side."""

    def finish(self, other: bytes) -> tuple[bytes, bytes]:
        """The shared key from the other side's message, as :func:`session_keys`.

        Raises:
            LinkCodeError: the message is malformed (a wrong password does not raise:
                the keys then differ and the first box fails to open).
        """
        try:
            return session_keys(self._spake.finish(other))
        except (SPAKEError, ValueError, TypeError) as exc:
            raise LinkCodeError(f"malformed PAKE message: {exc}") from exc


def session_keys(key: bytes) -> tuple[bytes, bytes]:
    """``(new device -> primary, primary -> new device)`` SecretBox keys from the PAKE key
    (BLAKE2b-256 keyed with it, one personalisation per direction)."""
    return (hashlib.blake2b(b"", key=key, digest_size=32, person=b"wa-link-n2p").digest(),
            hashlib.blake2b(b"", key=key, digest_size=32, person=b"wa-link-p2n").digest())


def seal_box(key: bytes, plaintext: bytes) -> bytes:
    """XSalsa20-Poly1305 (``SecretBox``) with a random nonce."""
    return bytes(nacl.secret.SecretBox(key).encrypt(plaintext))


def open_box(key: bytes, box: bytes) -> bytes:
    """Inverse of :func:`seal_box`.

    Raises:
        LinkCodeError: it does not open (a wrong code, or tampering).
    """
    try:
        return nacl.secret.SecretBox(key).decrypt(box)
    except (nacl.exceptions.CryptoError, ValueError) as exc:
        raise LinkCodeError("the linking exchange does not decrypt: a wrong code, or the "
                            "relay tampered with it") from exc


def pake_info(message: bytes) -> bytes:
    """The ``device_info`` a new device puts in a word-code mailbox: msgpack ``{v: 2,
    pake: its SPAKE2 message}`` (opaque to the relay; read by :func:`read_pake_info`)."""
    return msgpack.packb({"v": 2, "pake": message}, use_bin_type=True)


def read_pake_info(blob: bytes) -> bytes | None:
    """The SPAKE2 message of a :func:`pake_info` blob, or ``None`` if ``blob`` is not one
    (a mailbox opened for a scanned linking code)."""
    try:
        m = msgpack.unpackb(blob, raw=False, max_map_len=4, max_bin_len=256, ext_hook=refuse_ext)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    theirs = m.get("pake") if isinstance(m, dict) and m.get("v") == 2 else None
    return theirs if isinstance(theirs, bytes) else None
