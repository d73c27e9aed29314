"""Traffic engineering: a traffic matrix learned from OVS counters, and path weights that keep links below
capacity. Pure functions and plain values; controller/ polls, persists and applies."""
