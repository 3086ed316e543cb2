"""Alerting: rules, engine, alert store, routing, forecast, ack links, notifiers."""
