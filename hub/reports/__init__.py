"""The service report for the city (docs/report.md): what the stations did over a
month or a quarter, per station, per town and in total, with the period before
it for comparison; as a console page, CSV and a PDF with charts.

Every figure comes from what the hub stored: the stations' events (visits,
loans, water running low and refilled) and the uptime ledger. The counters in a
station's State reset with each epoch and are never used.
"""
