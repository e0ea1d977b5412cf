"""The ``mpctrain`` command line.

gRPC's C core logs to stderr on its own (an INFO line when a peer closes a connection, say), which reads
like an error in a command's output. It is set to errors only here, before any command imports grpc, unless
the user chose a level (GRPC_VERBOSITY=DEBUG to see everything).
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
