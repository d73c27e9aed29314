"""What the tests and the benchmarks share, so that neither imports the other: real OVS instances, the store
and controller processes (`harness`), a switch in memory (`fakeswitch`), a fake OpenFlow peer and its
malformed messages (`ofpeer`, `openflow_fuzz`), configuration mutations (`config_fuzz`), the replicated test
bed's traffic and checks (`replica_bed`), forged IPFIX (`ipfix`). Not installed: it lives beside `tests/` and
`bench/`, as Faucet's `clib/` does."""
