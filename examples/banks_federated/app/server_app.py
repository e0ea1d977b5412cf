"""The banks' ServerApp entry, as the FAB declares it: it only ever runs inside the mpctrain aggregator.

The aggregator (``mpctrain aggregator serve`` with ``[federated]``) takes each consented job's run from the
SuperLink and runs ``Confidential(strategy)`` itself, next to the enclave keys, with the strategy the
manifest names and the initial model from ``task.initial_arrays``. A SuperLink started without
``--isolation process`` would run this entry instead, outside any enclave: it refuses.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    raise RuntimeError("the banks' ServerApp runs only inside the attested mpctrain aggregator: start the SuperLink "
                       "with --isolation process and `mpctrain aggregator serve` with a [federated] section")
