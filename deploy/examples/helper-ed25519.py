#!/usr/bin/env python3
"""Provisioning helper for Organization Issuer (ed25519) networks.

The provisioner runs this once per server with the server's details on stdin (see
docs/helper.md); the server has already made its ed25519 key (`ed25519_pubkey`). This answers
with a configuration for the choria security provider, which reads the server JWT we issue
from the key's directory, and with `server_claims` for that JWT. Set ISSUER_PUBLIC to the
Organization Issuer's public key (hex) the servers trust, or ISSUER_PUBLIC_FILE to its PEM
file, and CHORIA_BROKER to the brokers.
Only the standard library is used.
"""
import base64
import json
import os
import sys

BROKER = os.environ.get("CHORIA_BROKER", "nats://broker.example.net:4222")


def issuer_from_file():
    """The hex key of a PEM ed25519 public key: its last 32 bytes."""
    path = os.environ.get("ISSUER_PUBLIC_FILE", "")
    if not path:
        return ""
    try:
        with open(path) as f:
            body = "".join(line.strip() for line in f if not line.startswith("-----"))
        return base64.b64decode(body)[-32:].hex()
    except (OSError, ValueError) as e:
        print(f"helper: {path}: {e}", file=sys.stderr)
        return ""


def main():
    try:
        request = json.load(sys.stdin)
    except ValueError as e:
        print(f"helper: input is not JSON: {e}", file=sys.stderr)
        return 1
    identity = request.get("identity") or ""
    key = request.get("ed25519_pubkey") or {}
    directory = key.get("directory") or ""
    if not identity or not directory:
        # not ready: ask the provisioner to try again later
        print(json.dumps({"defer": True, "msg": "no identity or ed25519 key directory yet"}))
        return 0
    issuer = os.environ.get("ISSUER_PUBLIC", "") or issuer_from_file()
    if len(issuer) != 64:
        print("helper: set ISSUER_PUBLIC to the issuer's hex public key, or ISSUER_PUBLIC_FILE "
              "to its PEM file (provisioner ca issuer)", file=sys.stderr)
        return 1

    configuration = {
        "identity": identity,
        "loglevel": "info",
        # without this the server would come back to provisioning mode after its restart
        "plugin.choria.server.provision": "false",
        "plugin.choria.middleware_hosts": BROKER,
        "plugin.security.provider": "choria",
        "plugin.security.issuer.names": "choria",
        "plugin.security.issuer.choria.public": issuer,
        "plugin.security.choria.token_file": os.path.join(directory, "server.jwt"),
        "plugin.security.choria.seed_file": os.path.join(directory, "server.seed"),
    }
    server_claims = {
        # what the server may do beyond the basics
        "permissions": {"streams": True, "submission": True},
    }
    print(json.dumps({
        "defer": False,
        "msg": "configured",
        "configuration": configuration,
        "server_claims": server_claims,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
