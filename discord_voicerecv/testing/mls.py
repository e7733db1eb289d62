"""The few MLS (RFC 9420) encodings a DAVE voice gateway needs as the group's external sender.

Pure byte in, byte out: the external sender package (op25), signed external Add/Remove proposals (op27), proposal
references, and just enough parsing of key packages (op26) and commits (op28) to learn who is who, which epoch a
commit is for, which proposals it references, and where the commit ends and the welcome begins. Encodings follow
the TLS presentation language with MLS variable-length vector headers (QUIC-style varints, minimal length).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import MalformedMlsMessage

__all__ = (
    "CIPHER_SUITE_P256",
    "CONTENT_COMMIT",
    "CONTENT_PROPOSAL",
    "MLS_VERSION_10",
    "PROPOSALS_APPEND",
    "PROPOSALS_REVOKE",
    "SENDER_EXTERNAL",
    "SENDER_MEMBER",
    "WIRE_PUBLIC_MESSAGE",
    "WIRE_WELCOME",
    "CommitInfo",
    "ExternalSenderKey",
    "KeyPackageInfo",
    "build_add_proposal",
    "build_external_sender",
    "build_proposals",
    "build_remove_proposal",
    "encode_varint",
    "encode_vector",
    "key_package_ref",
    "parse_commit",
    "parse_key_package",
    "proposal_ref",
    "split_commit_welcome",
    "targeted_welcome",
    "unwrap_key_package",
    "welcome_recipients",
)

MLS_VERSION_10 = 1
CIPHER_SUITE_P256 = 2
"""MLS_128_DHKEMP256_AES128GCM_SHA256_P256, the suite of DAVE protocol version 1."""
CREDENTIAL_BASIC = 1
CREDENTIAL_X509 = 2
WIRE_PUBLIC_MESSAGE = 1
WIRE_PRIVATE_MESSAGE = 2
WIRE_WELCOME = 3
WIRE_KEY_PACKAGE = 5
SENDER_MEMBER = 1
SENDER_EXTERNAL = 2
CONTENT_PROPOSAL = 2
CONTENT_COMMIT = 3
PROPOSAL_ADD = 1
PROPOSAL_REMOVE = 3
PROPOSAL_OR_REF_PROPOSAL = 1
PROPOSAL_OR_REF_REFERENCE = 2
PROPOSALS_APPEND = 0
PROPOSALS_REVOKE = 1
LEAF_SOURCE_KEY_PACKAGE = 1
LEAF_SOURCE_UPDATE = 2
LEAF_SOURCE_COMMIT = 3

_SIGN_LABEL_FRAMED_CONTENT = b"MLS 1.0 FramedContentTBS"
_REF_LABEL_PROPOSAL = b"MLS 1.0 Proposal Reference"
_REF_LABEL_KEY_PACKAGE = b"MLS 1.0 KeyPackage Reference"
_MAX_VARINT = (1 << 30) - 1


def encode_varint(value: int) -> bytes:
    """Encode a vector length as an MLS variable-length integer (1, 2 or 4 bytes, the shortest that fits)."""
    if value < 0 or value > _MAX_VARINT:
        raise ValueError(f"vector length {value} out of range")
    if value < 0x40:
        return bytes((value,))
    if value < 0x4000:
        return struct.pack(">H", 0x4000 | value)
    return struct.pack(">I", 0x8000_0000 | value)


def encode_vector(data: bytes) -> bytes:
    """Prefix ``data`` with its varint length (an ``opaque<V>``)."""
    return encode_varint(len(data)) + data


class _Reader:
    """A cursor over MLS-encoded bytes; every read raises `MalformedMlsMessage` when the bytes run out."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, size: int, what: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise MalformedMlsMessage(what, f"needs {size} bytes at offset {self.pos}, has {len(self.data) - self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack(">H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack(">I", self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = struct.unpack(">Q", self.take(8, what))[0]
        return value

    def varint(self, what: str) -> int:
        first = self.u8(what)
        prefix = first >> 6
        if prefix == 0:
            return first
        if prefix == 1:
            value = ((first & 0x3F) << 8) | self.u8(what)
            minimum = 0x40
        elif prefix == 2:
            value = ((first & 0x3F) << 24) | int.from_bytes(self.take(3, what), "big")
            minimum = 0x4000
        else:
            raise MalformedMlsMessage(what, "varint prefix 0b11 is not allowed")
        if value < minimum:
            raise MalformedMlsMessage(what, "varint not minimally encoded")
        return value

    def vector(self, what: str) -> bytes:
        return self.take(self.varint(what), what)

    def done(self) -> bool:
        return self.pos == len(self.data)


class ExternalSenderKey:
    """The voice gateway's MLS signature key pair (ECDSA P-256 / SHA-256, cipher suite 2).

    Parameters
    ----------
    private_key:
        An existing key; a fresh one is generated when omitted.
    """

    __slots__ = ("_private", "public_key")

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | None = None) -> None:
        self._private = private_key if private_key is not None else ec.generate_private_key(ec.SECP256R1())
        self.public_key: bytes = self._private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        """The uncompressed SEC1 point (65 bytes) members pin as the group's only external sender."""

    def sign(self, data: bytes) -> bytes:
        """DER-encoded ECDSA signature over SHA-256 of ``data``."""
        return self._private.sign(data, ec.ECDSA(hashes.SHA256()))

    def sign_with_label(self, label: bytes, content: bytes) -> bytes:
        """RFC 9420 ``SignWithLabel``: sign ``label<V> || content<V>`` (``label`` already carries "MLS 1.0 ")."""
        return self.sign(encode_vector(label) + encode_vector(content))


def build_external_sender(public_key_uncompressed: bytes, identity: bytes) -> bytes:
    """Encode an ``ExternalSender`` (op25 payload): ``signature_key<V> | credential_type u16 = basic | identity<V>``."""
    return encode_vector(public_key_uncompressed) + struct.pack(">H", CREDENTIAL_BASIC) + encode_vector(identity)


def _external_proposal(group_id: int, epoch: int, proposal: bytes, signer: ExternalSenderKey) -> bytes:
    framed_content = (
        encode_vector(struct.pack(">Q", group_id))
        + struct.pack(">QBI", epoch, SENDER_EXTERNAL, 0)
        + encode_vector(b"")
        + bytes((CONTENT_PROPOSAL,))
        + proposal
    )
    header = struct.pack(">HH", MLS_VERSION_10, WIRE_PUBLIC_MESSAGE)
    signature = signer.sign_with_label(_SIGN_LABEL_FRAMED_CONTENT, header + framed_content)
    return header + framed_content + encode_vector(signature)


def build_add_proposal(group_id: int, epoch: int, key_package: bytes, signer: ExternalSenderKey) -> bytes:
    """An external Add proposal for ``key_package`` (op26 bytes), as a signed PublicMessage MLSMessage.

    ``group_id`` is the voice channel id (the MLS group id is its 8 big-endian bytes).
    """
    return _external_proposal(group_id, epoch, struct.pack(">H", PROPOSAL_ADD) + key_package, signer)


def build_remove_proposal(group_id: int, epoch: int, leaf_index: int, signer: ExternalSenderKey) -> bytes:
    """An external Remove proposal for ``leaf_index``, as a signed PublicMessage MLSMessage."""
    return _external_proposal(group_id, epoch, struct.pack(">HI", PROPOSAL_REMOVE, leaf_index), signer)


def build_proposals(op_type: int, messages: list[bytes]) -> bytes:
    """The op27 payload: ``operation_type u8`` then one vector of proposals.

    For `PROPOSALS_APPEND` ``messages`` are proposal MLSMessages (self-delimiting, concatenated); for
    `PROPOSALS_REVOKE` they are proposal references (`proposal_ref`), each written as an ``opaque<V>``.
    """
    if op_type == PROPOSALS_APPEND:
        body = b"".join(messages)
    elif op_type == PROPOSALS_REVOKE:
        body = b"".join(encode_vector(ref) for ref in messages)
    else:
        raise ValueError(f"unknown proposals operation type {op_type}")
    return bytes((op_type,)) + encode_vector(body)


def proposal_ref(message: bytes) -> bytes:
    """The ``ProposalRef`` of an external proposal MLSMessage: ``RefHash("MLS 1.0 Proposal Reference", ...)``.

    The hashed value is the ``AuthenticatedContent`` (wire format, framed content, signature), which for an
    external sender's PublicMessage is the message without its 2-byte protocol version.
    """
    value = message[2:]
    return hashlib.sha256(encode_vector(_REF_LABEL_PROPOSAL) + encode_vector(value)).digest()


@dataclass(frozen=True, slots=True)
class KeyPackageInfo:
    """What the gateway reads from a member's key package."""

    cipher_suite: int
    identity: bytes
    """The basic credential identity: in DAVE the user id as 8 big-endian bytes."""
    signature_key: bytes

    @property
    def user_id(self) -> int | None:
        """The Discord user id the credential names, or None when the identity is not 8 bytes."""
        return int.from_bytes(self.identity, "big") if len(self.identity) == 8 else None


def _skip_credential(reader: _Reader) -> bytes:
    kind = reader.u16("credential")
    if kind == CREDENTIAL_BASIC:
        return reader.vector("credential identity")
    if kind == CREDENTIAL_X509:
        reader.vector("credential certificates")
        return b""
    raise MalformedMlsMessage("credential", f"unknown credential type {kind}")


def _read_leaf_node(reader: _Reader) -> tuple[bytes, bytes]:
    """Walk a ``LeafNode``; return its credential identity and signature key."""
    reader.vector("leaf encryption_key")
    signature_key = reader.vector("leaf signature_key")
    identity = _skip_credential(reader)
    for part in ("versions", "cipher_suites", "extensions", "proposals", "credentials"):
        reader.vector(f"leaf capabilities {part}")
    source = reader.u8("leaf_node_source")
    if source == LEAF_SOURCE_KEY_PACKAGE:
        reader.take(16, "leaf lifetime")
    elif source == LEAF_SOURCE_COMMIT:
        reader.vector("leaf parent_hash")
    elif source != LEAF_SOURCE_UPDATE:
        raise MalformedMlsMessage("leaf_node_source", f"unknown source {source}")
    reader.vector("leaf extensions")
    reader.vector("leaf signature")
    return identity, signature_key


def parse_key_package(data: bytes) -> KeyPackageInfo:
    """Parse a ``KeyPackage`` (op26 payload) exactly; raise `MalformedMlsMessage` on anything else."""
    reader = _Reader(data)
    version = reader.u16("key package version")
    if version != MLS_VERSION_10:
        raise MalformedMlsMessage("version", f"key package version {version}")
    cipher_suite = reader.u16("key package cipher_suite")
    reader.vector("key package init_key")
    identity, signature_key = _read_leaf_node(reader)
    reader.vector("key package extensions")
    reader.vector("key package signature")
    if not reader.done():
        raise MalformedMlsMessage("trailing", f"{len(data) - reader.pos} bytes after the key package")
    return KeyPackageInfo(cipher_suite, identity, signature_key)


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """The framing of a member's commit, as the gateway sees it (it cannot check the MLS signature chain)."""

    group_id: bytes
    epoch: int
    sender_type: int
    sender_index: int
    proposal_refs: tuple[bytes, ...]
    """References to proposals the commit applies, in commit order."""
    inline_proposals: int
    """Proposals carried by value (DAVE allows none)."""
    has_path: bool
    size: int
    """Bytes of the commit MLSMessage; anything after it in op28 is the welcome."""


def _read_commit_body(reader: _Reader) -> tuple[tuple[bytes, ...], int, bool]:
    proposals = _Reader(reader.vector("commit proposals"))
    refs: list[bytes] = []
    inline = 0
    while not proposals.done():
        kind = proposals.u8("proposal_or_ref type")
        if kind == PROPOSAL_OR_REF_REFERENCE:
            refs.append(proposals.vector("proposal ref"))
        elif kind == PROPOSAL_OR_REF_PROPOSAL:
            inline += 1
            _skip_inline_proposal(proposals)
        else:
            raise MalformedMlsMessage("proposal_or_ref", f"unknown type {kind}")
    present = reader.u8("commit path presence")
    if present > 1:
        raise MalformedMlsMessage("optional", f"presence byte {present}")
    if present:
        _read_leaf_node(reader)
        reader.vector("update path nodes")
    return tuple(refs), inline, bool(present)


def _skip_inline_proposal(reader: _Reader) -> None:
    kind = reader.u16("proposal type")
    if kind == PROPOSAL_ADD:
        reader.u16("key package version")
        reader.u16("key package cipher_suite")
        reader.vector("key package init_key")
        _read_leaf_node(reader)
        reader.vector("key package extensions")
        reader.vector("key package signature")
    elif kind == PROPOSAL_REMOVE:
        reader.u32("remove leaf index")
    else:
        raise MalformedMlsMessage("proposal", f"inline proposal type {kind} is not allowed in DAVE")


def parse_commit(data: bytes, offset: int = 0) -> CommitInfo:
    """Parse the commit PublicMessage that starts at ``offset``; trailing bytes are left for the caller."""
    reader = _Reader(data, offset)
    version = reader.u16("mls version")
    if version != MLS_VERSION_10:
        raise MalformedMlsMessage("version", f"MLS version {version}")
    wire_format = reader.u16("wire_format")
    if wire_format != WIRE_PUBLIC_MESSAGE:
        raise MalformedMlsMessage("wire_format", f"commit has wire format {wire_format}, wants a public message")
    group_id = reader.vector("group_id")
    epoch = reader.u64("epoch")
    sender_type = reader.u8("sender_type")
    if sender_type not in (SENDER_MEMBER, SENDER_EXTERNAL):
        raise MalformedMlsMessage("sender", f"sender type {sender_type} cannot commit here")
    sender_index = reader.u32("sender index")
    reader.vector("authenticated_data")
    content_type = reader.u8("content_type")
    if content_type != CONTENT_COMMIT:
        raise MalformedMlsMessage("content_type", f"content type {content_type}, wants a commit")
    refs, inline, has_path = _read_commit_body(reader)
    reader.vector("signature")
    reader.vector("confirmation_tag")
    if sender_type == SENDER_MEMBER:
        reader.vector("membership_tag")
    return CommitInfo(group_id, epoch, sender_type, sender_index, refs, inline, has_path, reader.pos - offset)


def _read_welcome(data: bytes) -> tuple[int, int, list[tuple[bytes, bytes]], bytes]:
    """Parse a ``Welcome`` (bare, or wrapped as an MLSMessage): cipher suite, start offset, secrets, group info."""
    wrapped = data[:4] == struct.pack(">HH", MLS_VERSION_10, WIRE_WELCOME)
    reader = _Reader(data, 4 if wrapped else 0)
    cipher_suite = reader.u16("welcome cipher_suite")
    secrets = _Reader(reader.vector("welcome secrets"))
    entries: list[tuple[bytes, bytes]] = []
    while not secrets.done():
        start = secrets.pos
        new_member = secrets.vector("welcome new_member")
        secrets.vector("welcome kem_output")
        secrets.vector("welcome ciphertext")
        entries.append((new_member, secrets.data[start : secrets.pos]))
    group_info = reader.vector("welcome encrypted_group_info")
    if not reader.done():
        raise MalformedMlsMessage("trailing", f"{len(data) - reader.pos} bytes after the welcome")
    return cipher_suite, 4 if wrapped else 0, entries, group_info


def welcome_recipients(welcome: bytes) -> tuple[bytes, ...]:
    """The ``KeyPackageRef`` of every new member a Welcome carries group secrets for."""
    return tuple(ref for ref, _ in _read_welcome(welcome)[2])


def targeted_welcome(welcome: bytes, key_package: bytes) -> bytes:
    """The Welcome cut down to the one ``EncryptedGroupSecrets`` entry for ``key_package``, as Discord sends in op30.

    Raises `MalformedMlsMessage` (``"welcome"``) when the welcome has no secrets for that key package.
    """
    cipher_suite, _, entries, group_info = _read_welcome(welcome)
    ref = key_package_ref(key_package)
    for new_member, entry in entries:
        if new_member == ref:
            return struct.pack(">H", cipher_suite) + encode_vector(entry) + encode_vector(group_info)
    raise MalformedMlsMessage("welcome", "no group secrets for this key package")


def key_package_ref(key_package: bytes) -> bytes:
    """``RefHash("MLS 1.0 KeyPackage Reference", KeyPackage)``: how a Welcome names each new member."""
    return hashlib.sha256(encode_vector(_REF_LABEL_KEY_PACKAGE) + encode_vector(key_package)).digest()


def unwrap_key_package(data: bytes) -> bytes:
    """The bare ``KeyPackage`` of an op26 payload, which may also come wrapped as an MLSMessage (wire format 5)."""
    if data[:4] == struct.pack(">HH", MLS_VERSION_10, WIRE_KEY_PACKAGE):
        return data[4:]
    return data


def split_commit_welcome(data: bytes) -> tuple[bytes, bytes | None]:
    """Split an op28 payload into the commit MLSMessage and the welcome that follows it (None when absent).

    The welcome is returned as received (davey sends the bare ``Welcome`` structure) once it is checked to be
    exactly one Welcome.
    """
    info = parse_commit(data)
    commit, rest = data[: info.size], data[info.size :]
    if not rest:
        return commit, None
    _read_welcome(rest)
    return commit, rest
