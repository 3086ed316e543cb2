"""``yizhan sim fleet``: many simulated stations as MQTT clients against any broker.

- ``traffic``: riders by the hour (night and meal-time peaks), water drawn by the hour;
- ``station``: one station's counters and its contract payloads, its faults;
- ``faults``: scripted (``--fault``) and random faults;
- ``clients``: one paho-mqtt client per station, all on one selector loop;
- ``truth``: the ground-truth log (JSON lines);
- ``run``: the command: arguments, progress display, summary.
- ``shards``, ``child``: ``--processes N``, the fleet in N processes shown,
  logged and summed as one.

docs/simulator.md says what it does and what it leaves out.
"""
