"""A throwaway certificate authority and server certificate for the local Discord's TLS endpoints.

discord.py opens the voice websocket as ``wss://{endpoint}/?v=8`` with certificate checks on, so the local voice
gateway must present a certificate a client can be told to trust: a private CA (its PEM is what clients load) that
signs a leaf for ``127.0.0.1`` / ``localhost``, and is name-constrained to those names. Both use P-256 keys,
generated in milliseconds at startup.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ("LocalCertificate", "generate_certificate")

_DEFAULT_HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True, slots=True)
class LocalCertificate:
    """A CA certificate and the server certificate it signed, both PEM encoded.

    Attributes
    ----------
    ca_pem:
        The CA certificate: what a client adds to its trust store.
    cert_pem:
        The server certificate followed by the CA certificate (the chain a server presents).
    key_pem:
        The server's private key (PKCS#8, unencrypted).
    hosts:
        Names and addresses the server certificate is valid for.
    """

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    hosts: tuple[str, ...]

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the certificate chain."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="local-discord-tls-") as folder:
            cert_path = os.path.join(folder, "cert.pem")
            key_path = os.path.join(folder, "key.pem")
            with open(cert_path, "wb") as out:
                out.write(self.cert_pem)
            with open(key_path, "wb") as out:  # the temporary folder is private (mode 0700)
                out.write(self.key_pem)
            context.load_cert_chain(cert_path, key_path)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client-side context that trusts only this CA (hostname checks stay on)."""
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=self.ca_pem.decode("ascii"))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alternative_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _name_constraints(hosts: Iterable[str]) -> x509.NameConstraints:
    """Limit a CA to exactly ``hosts``: it cannot vouch for any other name or address, even if its key leaks."""
    permitted: list[x509.GeneralName] = []
    for host in hosts:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            permitted.append(x509.DNSName(host))
        else:
            permitted.append(x509.IPAddress(ipaddress.ip_network(address)))
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not cert_sign,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _make_ca(
    hosts: tuple[str, ...], start: datetime.datetime, end: datetime.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed P-256 CA that may sign server certificates for ``hosts`` only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("discord-voicerecv local CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(_name_constraints(hosts), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: tuple[str, ...],
    start: datetime.datetime,
    end: datetime.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-256 server certificate for ``hosts`` signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else "localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alternative_names(hosts)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)


def generate_certificate(hosts: Iterable[str] = _DEFAULT_HOSTS, *, days: int = 30) -> LocalCertificate:
    """Create a new CA and a server certificate for ``hosts`` (IP addresses or DNS names).

    The CA carries name constraints for exactly ``hosts``, so trusting it trusts nothing else.

    Parameters
    ----------
    hosts:
        What the server certificate covers; ``127.0.0.1`` and ``localhost`` by default.
    days:
        Validity of both certificates, starting one hour in the past to tolerate clock skew.
    """
    hosts = tuple(dict.fromkeys(hosts))
    start, end = _validity(days)
    ca_key, ca_cert = _make_ca(hosts, start, end)
    key, cert = _make_leaf(ca_key, ca_cert, hosts, start, end)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    return LocalCertificate(
        ca_pem=ca_pem,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM) + ca_pem,
        key_pem=key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        hosts=hosts,
    )
