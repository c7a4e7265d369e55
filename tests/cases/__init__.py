"""Tables of cases shared by the unit tests (Python twins) and the e2e tests (the real API server)."""
