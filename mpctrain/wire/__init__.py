"""The wire: modules generated from protos/ by scripts/gen_protos.py (never edited by hand), and convert.py."""
