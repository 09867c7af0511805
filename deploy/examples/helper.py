#!/usr/bin/env python3
"""Example provisioning helper: reads a server's details on stdin, writes its configuration.

The provisioner runs this once per server. Input (JSON): identity, csr (with ssldir when the pki
feature is on), ed25519_pubkey, inventory (a JSON string) and jwt (verified claims). Output
(JSON): see docs/helper.md. With UPGRADE_TO set, it asks for every server to run that Choria
version (the provisioner's `upgrades` feature updates those that can). Only the standard
library is used.
"""
import json
import os
import sys

BROKER = os.environ.get("CHORIA_BROKER", "nats://broker.example.net:4222")


def main():
    try:
        request = json.load(sys.stdin)
    except ValueError as e:
        print(f"helper: input is not JSON: {e}", file=sys.stderr)
        return 1

    identity = request.get("identity") or ""
    if not identity:
        print("helper: no identity in input", file=sys.stderr)
        return 1

    inventory = json.loads(request.get("inventory") or "{}")
    csr = request.get("csr") or {}
    ssldir = csr.get("ssldir") or "/etc/choria/ssl"

    # A server that reports no agents is not ready: ask the provisioner to try again later.
    if not inventory.get("agents"):
        print(json.dumps({"defer": True, "msg": "inventory lists no agents yet"}))
        return 0

    configuration = {
        "identity": identity,
        "loglevel": "info",
        # without this the server would come back to provisioning mode after its restart
        "plugin.choria.server.provision": "false",
        "plugin.choria.middleware_hosts": BROKER,
        "plugin.security.provider": "file",
        "plugin.security.file.certificate": f"{ssldir}/certificate.pem",
        "plugin.security.file.key": f"{ssldir}/private.pem",
        "plugin.security.file.ca": f"{ssldir}/ca.pem",
    }

    # With no certificate/ca in the answer the provisioner's built-in CA signs the CSR.
    answer = {"defer": False, "msg": "configured", "configuration": configuration}
    if os.environ.get("UPGRADE_TO"):
        answer["upgrade"] = os.environ["UPGRADE_TO"]
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
