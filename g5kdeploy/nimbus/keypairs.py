"""EC2 key pairs: made (CreateKeyPair) or imported (ImportKeyPair), with the fingerprints
EC2 gives them — a made RSA key: SHA-1 of its DER PKCS#8 private key; an imported RSA key:
MD5 of its DER public key; ED25519 (either): SHA-256 of the OpenSSH key, base64. Only the
public key is kept; it reaches guests through their contextualization data."""
from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

NAME = re.compile(r"[\x20-\x7e]{1,255}")                 # EC2: ASCII, up to 255 characters
OPENSSH = re.compile(r"(ssh-rsa|ssh-ed25519) ([A-Za-z0-9+/]+={0,2})(?: [\x20-\x7e]*)?")


class BadKey(ValueError):
    """The key material is not a public key EC2 would import."""


@dataclass(frozen=True)
class PublicKey:
    type: str                  # rsa | ed25519 (EC2's KeyType)
    openssh: str               # "ssh-ed25519 AAAA..." (no comment): one authorized_keys line
    fingerprint: str


def _colons(digest: bytes) -> str:
    return ":".join(f"{b:02x}" for b in digest)


def _ed25519_fingerprint(openssh: str) -> str:
    return base64.b64encode(hashlib.sha256(base64.b64decode(openssh.split()[1])).digest()).decode()


def _openssh(key) -> str:
    return key.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()


def create(key_type: str = "rsa", key_format: str = "pem") -> tuple[str, PublicKey]:
    """A new key pair: (private key material as EC2 returns it, its public key)."""
    if key_type == "ed25519":
        if key_format == "ppk":
            raise BadKey("KeyFormat ppk is not offered here: use pem")
        private = ed25519.Ed25519PrivateKey.generate()
        material = private.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
        public = _openssh(private.public_key())
        return material.decode(), PublicKey("ed25519", public, _ed25519_fingerprint(public))
    if key_type != "rsa" or key_format != "pem":
        raise BadKey(f"KeyType {key_type} / KeyFormat {key_format}: use rsa or ed25519, pem")
    private = rsa.generate_private_key(65537, 2048)
    pkcs8 = private.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    material = private.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption())
    return material.decode(), PublicKey("rsa", _openssh(private.public_key()), _colons(hashlib.sha1(pkcs8).digest()))


def imported(material: bytes) -> PublicKey:
    """The public key of ImportKeyPair's material (OpenSSH line, PEM or DER public key)."""
    text = material.decode("ascii", "replace").strip()
    if OPENSSH.fullmatch(text):
        key = ser.load_ssh_public_key(" ".join(text.split()[:2]).encode())
    else:
        try:
            key = (ser.load_pem_public_key(material) if text.startswith("-----") else ser.load_der_public_key(material))
        except ValueError:
            key = None
    if isinstance(key, ed25519.Ed25519PublicKey):
        public = _openssh(key)
        return PublicKey("ed25519", public, _ed25519_fingerprint(public))
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 1024:
        der = key.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
        return PublicKey("rsa", _openssh(key), _colons(hashlib.md5(der).digest()))
    raise BadKey("Key is not in valid OpenSSH public key format: give an ssh-rsa (1024 bits or more) "
                    "or ssh-ed25519 public key")
