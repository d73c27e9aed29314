"""Security operations, one feature in one folder: detection finds an anomalous source (`detect`), the
act-or-not rule says whether to quarantine it (`decide`), the quarantine list says who is cut off (`quarantine`:
a file beside the configuration; `stored`: the same list in the replicated store). The flows that enforce it
are the compiler's (`cloudweave.flows.quarantine`); the controller's `quarantine_keeper` follows the list and
hands the core what to cut off."""
