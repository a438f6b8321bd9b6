"""Shrinker (thesis ch. 6) on unpatched QEMU: our agents move guest RAM (a shared file) with
distributed deduplication (source site: Redis SETNX) and content-based addressing
(destination site: Redis index, chunks fetched from peers and verified); QEMU moves only
device state (`x-ignore-shared`). Node-side modules use the standard library and
python3-redis only."""
