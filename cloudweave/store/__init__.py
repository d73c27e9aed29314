"""The replicated store of a controller cluster: a Raft-clustered ovsdb-server with cloudweave's own schema
(cloudweave.ovsschema). `cluster` creates, joins, starts and inspects its members; `client` is the one module
that talks OVSDB to it (python-ovs); `policy` packs the policy files into it."""

import os

SCHEMA = os.path.join(os.path.dirname(__file__), "cloudweave.ovsschema")
LOCAL_SCHEMA = os.path.join(os.path.dirname(__file__), "local.ovsschema")
DB = "Cloudweave"
