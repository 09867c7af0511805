#!/usr/bin/env python3
"""Provisioning helper for x509 networks whose certificates come from your own CA.

The provisioner runs this once per server with the server's details on stdin (see
docs/helper.md). It signs the server's CSR with the CA in $EXTERNAL_CA_CERT/$EXTERNAL_CA_KEY
using the openssl command, and answers with the certificate, the CA and the configuration.

With EXTERNAL_CA_MAKE_KEYS=1 it makes the server's private key itself (for servers that must
get their key from you) and returns it as `key`: the provisioner encrypts it for that server
(X25519 + AES-256-CBC, as upstream), so it never crosses the network in clear.

With ACTION_POLICY_FILE set, that file is sent to every server as the action policy
`default.policy`. Only the standard library and openssl are used.

What the certificate says is decided here, never by the CSR: a server may ask for anything in
its CSR (to be a CA, other names), so no extension is copied from it; the extensions come from
a fixed file (not a CA, server and client authentication, the identity as the only DNS name),
and the identity reaches openssl only through the environment, never inside `-subj`, after it
was checked to be a host name.
"""
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile

BROKER = os.environ.get("CHORIA_BROKER", "nats://broker.example.net:4222")

# A host name: what a Choria identity is. Anything else is refused before openssl sees it.
IDENTITY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

# Every certificate gets exactly these extensions; SERVER_IDENTITY comes from the environment.
EXTENSIONS = """
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:${ENV::SERVER_IDENTITY}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

# The request for a key made here: the identity as the only subject field.
REQUEST = """
[req]
prompt = no
distinguished_name = dn
[dn]
CN = ${ENV::SERVER_IDENTITY}
"""


def openssl(*args, identity):
    env = dict(os.environ, SERVER_IDENTITY=identity)
    subprocess.run(["openssl", *args], check=True, capture_output=True, env=env)


def sign(work, csr_path, cert_path, identity):
    ext = os.path.join(work, "extensions.cnf")
    with open(ext, "w") as f:
        f.write(EXTENSIONS)
    # x509 -req copies no extension from the CSR unless told to (-copy_extensions)
    openssl(
        "x509", "-req", "-in", csr_path,
        "-CA", os.environ["EXTERNAL_CA_CERT"], "-CAkey", os.environ["EXTERNAL_CA_KEY"],
        "-set_serial", str(secrets.randbits(120)), "-days", "365",
        "-extfile", ext, "-extensions", "server", "-out", cert_path,
        identity=identity,
    )


def main():
    try:
        request = json.load(sys.stdin)
    except ValueError as e:
        print(f"helper: input is not JSON: {e}", file=sys.stderr)
        return 1
    identity = request.get("identity") or ""
    csr = request.get("csr") or {}
    if not identity or not csr.get("csr"):
        print("helper: needs an identity and a CSR (features.pki)", file=sys.stderr)
        return 1
    if len(identity) > 253 or not IDENTITY.match(identity):
        print("helper: the identity is not a host name; refusing it", file=sys.stderr)
        return 1
    ssldir = csr.get("ssldir") or "/etc/choria/ssl"
    answer = {"defer": False, "msg": "signed by the external CA"}

    with tempfile.TemporaryDirectory() as work:
        csr_path = os.path.join(work, "server.csr")
        cert_path = os.path.join(work, "server.pem")
        if os.environ.get("EXTERNAL_CA_MAKE_KEYS") == "1":
            key_path = os.path.join(work, "server.key")
            req = os.path.join(work, "request.cnf")
            with open(req, "w") as f:
                f.write(REQUEST)
            openssl(
                "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", key_path, "-config", req, "-out", csr_path,
                identity=identity,
            )
            with open(key_path) as f:
                answer["key"] = f.read()
        else:
            with open(csr_path, "w") as f:
                f.write(csr["csr"])
        sign(work, csr_path, cert_path, identity)
        with open(cert_path) as f:
            answer["certificate"] = f.read()
    with open(os.environ["EXTERNAL_CA_CERT"]) as f:
        answer["ca"] = f.read()

    answer["configuration"] = {
        "identity": identity,
        "plugin.choria.server.provision": "false",
        "plugin.choria.middleware_hosts": BROKER,
        "plugin.security.provider": "file",
        "plugin.security.file.certificate": f"{ssldir}/certificate.pem",
        "plugin.security.file.key": f"{ssldir}/private.pem",
        "plugin.security.file.ca": f"{ssldir}/ca.pem",
    }
    policy = os.environ.get("ACTION_POLICY_FILE")
    if policy:
        with open(policy) as f:
            answer["action_policies"] = {"default.policy": f.read()}
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
