#!/usr/bin/env python3
import json, sys
req = json.load(sys.stdin)
ssl = (req.get("csr") or {}).get("ssldir") or "/etc/choria/ssl"
print(json.dumps({"defer": False, "msg": "ok", "configuration": {"identity": req["identity"], "plugin.choria.server.provision": "false", "plugin.security.provider": "file"}}))
