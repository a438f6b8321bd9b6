"""EC2 key pairs: made (CreateKeyPair) or imported (ImportKeyPair), with the fingerprints
EC2 gives them — a made RSA key: SHA-1 of its DER PKCS#8 private key; an imported RSA key:
MD5 of its DER public key; ED25519 (either): SHA-256 of the OpenSSH key, base64. Only the
public key is kept; it reaches guests through their contextualization data. KeyPairActions:
the EC2 actions, a mixin of api.Service."""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from g5kdeploy.nimbus import ec2
from g5kdeploy.nimbus.ec2 import EC2Error

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


KEY_FILTERS = {"key-name", "fingerprint", "key-pair-id", "key-type"}


class KeyPairActions:
    def _new_key(self, p: dict, public: PublicKey, **extra) -> dict:
        name = p.get("KeyName", "")
        if not NAME.fullmatch(name):
            raise EC2Error("InvalidParameterValue" if name else "MissingParameter",
                           "KeyName must be 1-255 ASCII characters")
        if self.store.record("keys", name):
            raise EC2Error("InvalidKeyPair.Duplicate", f"The keypair '{name}' already exists.")
        ec2.dry_run(p)
        key = {"name": name, "id": ec2.new_id("key"), "type": public.type, "fingerprint": public.fingerprint,
               "public_key": public.openssh, "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
               "tags": ec2.tags(p, "key-pair")}
        if not self.store.put_record("keys", name, key, new=True):
            raise EC2Error("InvalidKeyPair.Duplicate", f"The keypair '{name}' already exists.")
        return {"keyName": name, "keyFingerprint": public.fingerprint, "keyPairId": key["id"], **extra,
                "tagSet": ec2.tag_set(key["tags"])}

    def create_key_pair(self, p: dict) -> dict:
        try:
            private, public = create(p.get("KeyType", "rsa"), p.get("KeyFormat", "pem"))
        except BadKey as e:
            raise EC2Error("InvalidParameterValue", str(e)) from None
        return self._new_key(p, public, keyMaterial=private)

    def import_key_pair(self, p: dict) -> dict:
        try:
            public = imported(base64.b64decode(p.get("PublicKeyMaterial", ""), validate=True))
        except (binascii.Error, BadKey) as e:
            raise EC2Error("InvalidKey.Format", str(e) if isinstance(e, BadKey)
                           else "PublicKeyMaterial must be base64") from None
        return self._new_key(p, public)

    def describe_key_pairs(self, p: dict) -> dict:
        keys = self.store.records("keys")
        names, ids = ec2.members(p, "KeyName"), ec2.members(p, "KeyPairId")
        if unknown := [n for n in names if n not in keys]:
            raise EC2Error("InvalidKeyPair.NotFound", f"The key pair '{unknown[0]}' does not exist")
        if unknown := [i for i in ids if i not in {k["id"] for k in keys.values()}]:
            raise EC2Error("InvalidKeyPair.NotFound", f"The key pair '{unknown[0]}' does not exist")
        chosen = ec2.filters(p, KEY_FILTERS)
        out = []
        for k in sorted(keys.values(), key=lambda k: k["name"]):
            fields = {"key-name": [k["name"]], "fingerprint": [k["fingerprint"]], "key-pair-id": [k["id"]],
                      "key-type": [k["type"]]}
            if (not names or k["name"] in names) and (not ids or k["id"] in ids) and \
                    ec2.selected(fields, k["tags"], chosen):
                out.append({"keyPairId": k["id"], "keyName": k["name"], "keyFingerprint": k["fingerprint"],
                            "keyType": k["type"], "createTime": k["created"], "tagSet": ec2.tag_set(k["tags"]),
                            "publicKey": k["public_key"] if p.get("IncludePublicKey") == "true" else None})
        return {"keySet": out}

    def delete_key_pair(self, p: dict) -> dict:
        keys = self.store.records("keys")
        name = p.get("KeyName") or next((n for n, k in keys.items() if k["id"] == p.get("KeyPairId")), None)
        if not p.get("KeyName") and not p.get("KeyPairId"):
            raise EC2Error("MissingParameter", "The request must contain the parameter KeyName or KeyPairId")
        ec2.dry_run(p)
        gone = keys.get(name or "")
        if gone:
            self.store.delete_record("keys", name)
        return {"return": True, "keyPairId": gone and gone["id"]}     # EC2: true even if there was none

    ACTIONS = {"CreateKeyPair": create_key_pair, "ImportKeyPair": import_key_pair,
               "DescribeKeyPairs": describe_key_pairs, "DeleteKeyPair": delete_key_pair}
