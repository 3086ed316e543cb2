"""What the hub shows the public, without sign-in (docs/finder.md): the riders'
station finder (``/find``), the stations' GeoJSON feed and each station's poster.

Only ``hub.public.stations.public_stations`` reads the fleet for them, and it
gives nothing personal.
"""
