"""A self-signed TLS certificate for servers on 127.0.0.1 in tests (HTTPS without a CA)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key, as PEM files ``(cert.pem, key.pem)`` in ``folder``.

    ``CA:TRUE``, as many self-signed certificates are: whoever holds its key
    can issue others that a client trusting it accepts (:func:`issued_by`).
    """
    return _certificate(folder, issuer=None)


def issued_by(folder: Path, issuer: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 of a new key, signed with ``issuer``'s ``(cert.pem, key.pem)``, in ``folder``."""
    return _certificate(folder, issuer=issuer)


def _certificate(folder: Path, issuer: tuple[Path, Path] | None) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    # An issued certificate's own name differs from its issuer's, or it would read as self-signed.
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1" if issuer is None else "issued")])
    signer, issuer_name = key, name
    if issuer is not None:
        signer = serialization.load_pem_private_key(issuer[1].read_bytes(), password=None)
        issuer_name = x509.load_pem_x509_certificate(issuer[0].read_bytes()).subject
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
                   .sign(signer, hashes.SHA256()))
    cert, private = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, private
