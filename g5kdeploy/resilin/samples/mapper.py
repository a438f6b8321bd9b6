#!/usr/bin/env python3
"""Word Count's mapper (Hadoop streaming): `word TAB 1` for every word of every line."""
import re
import sys

for line in sys.stdin:
    for word in re.findall(r"[a-z0-9']+", line.lower()):
        print(f"{word}\t1")
