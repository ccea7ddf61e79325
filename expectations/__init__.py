"""Great Expectations suites (suites/*.json, reviewed files) and the validation gate (gate.py)."""
