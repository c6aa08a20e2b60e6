"""A private certificate authority and a server certificate for cra-cloud on this machine.

`make run` and the tests serve https and wss with these, so that the agent's and the user's tools
verify TLS against them exactly as they verify a tenant's. The authority's key is never written:
once the server certificate is signed, nobody can issue another one under it.
"""
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIFETIME = datetime.timedelta(days=30)
HOST_NAMES = ("localhost",)
HOST_ADDRESSES = ("127.0.0.1", "::1")


def issue(directory):
    """(ca.pem, server.pem, server.key) written in directory (made when missing): an authority, and a
    certificate it signed for localhost, 127.0.0.1 and ::1; the key readable by this user only."""
    now = datetime.datetime.now(datetime.timezone.utc)
    authority_key = ec.generate_private_key(ec.SECP256R1())
    authority_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cra-cloud local authority")])
    authority = (_certificate(authority_name, authority_name, authority_key.public_key(), now)
                 .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                 .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                 .sign(authority_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName(name) for name in HOST_NAMES] + [x509.IPAddress(ipaddress.ip_address(a)) for a in HOST_ADDRESSES]
    server = (_certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST_NAMES[0])]), authority_name,
                           server_key.public_key(), now)
              .add_extension(x509.SubjectAlternativeName(names), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(authority_key, hashes.SHA256()))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = tuple(os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server.key"))
    _write(paths[0], authority.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(paths[1], server.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(paths[2], server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()), 0o600)
    return paths


def _certificate(subject, issuer, public_key, now):
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + LIFETIME))


def _write(path, data, mode):
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
