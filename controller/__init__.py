"""The thin shell: talks OpenFlow (os-ken) and OVSDB, diffs desired against actual, and applies."""
