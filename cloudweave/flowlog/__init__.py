"""Flow logs: IPFIX records from OVS's sample actions, decoded, named after the policy, and analysed."""
