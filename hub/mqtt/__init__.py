"""The hub's MQTT side: the ingest, its bulk-reading client, its tallies."""
