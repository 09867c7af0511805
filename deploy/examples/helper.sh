#!/bin/sh
# Example provisioning helper in POSIX sh, using only shell builtins: it costs about a
# millisecond of CPU per server where a Python helper costs about 40 (benches/BENCHMARKS.md).
# It reads the request (JSON) on stdin and answers with the same configuration as helper.py,
# leaving certificate signing to the provisioner's built-in CA. It does not parse JSON: it
# takes the top-level "identity" string, which the provisioner has checked is a valid name.
# HELPER_SSLDIR sets the servers' ssl directory and CHORIA_BROKER their broker.

request=""
while IFS= read -r line || [ -n "$line" ]; do
    request="$request$line"
done

rest=${request#*\"identity\":\"}
identity=${rest%%\"*}
if [ "$rest" = "$request" ] || [ -z "$identity" ]; then
    echo "helper.sh: no identity in input" >&2
    exit 1
fi
case "$identity" in
    *[!A-Za-z0-9._-]*)
        echo "helper.sh: unexpected characters in identity" >&2
        exit 1
        ;;
esac

ssldir=${HELPER_SSLDIR:-/etc/choria/ssl}
broker=${CHORIA_BROKER:-nats://broker.example.net:4222}
printf '{"defer":false,"msg":"configured","configuration":{"identity":"%s","loglevel":"info","plugin.choria.server.provision":"false","plugin.choria.middleware_hosts":"%s","plugin.security.provider":"file","plugin.security.file.certificate":"%s/certificate.pem","plugin.security.file.key":"%s/private.pem","plugin.security.file.ca":"%s/ca.pem"}}\n' \
    "$identity" "$broker" "$ssldir" "$ssldir" "$ssldir"
