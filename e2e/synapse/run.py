"""Starts Synapse (`python run.py -c homeserver.yaml`) inside the e2e tests' federation.

The test servers have no DNS records. Where a real deployment publishes an SRV record
`_matrix-fed._tcp.<server name>`, this launcher puts the same answer into Synapse's SRV cache
for every name in TIM_E2E_RESOLVE ("name=host:port,..."); everything else — the .well-known
attempt, connecting, TLS with the certificate checked for the server name, signing — is
Synapse's own code path.
"""

import os
import time

from synapse.app.homeserver import main
from synapse.http.federation import srv_resolver

FOREVER = int(time.time()) + 10 * 365 * 24 * 3600

for entry in filter(None, os.environ.get("TIM_E2E_RESOLVE", "").split(",")):
    name, address = entry.split("=", 1)
    host, port = address.rsplit(":", 1)
    srv_resolver.SERVER_CACHE[b"_matrix-fed._tcp." + name.encode()] = [
        srv_resolver.Server(host=host.encode(), port=int(port), expires=FOREVER)
    ]

if __name__ == "__main__":
    main()
