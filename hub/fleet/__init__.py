"""The fleet: stations' live view, uptime ledger, loans, commands, banks."""
