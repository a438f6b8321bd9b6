#!/usr/bin/env python3
"""The mapper of EMR's Word Count sample (wordSplitter.py, for `-reducer aggregate`):
`LongValueSum:word TAB 1` for every word."""
import re
import sys

for line in sys.stdin:
    for word in re.findall(r"[a-z0-9']+", line.lower()):
        print(f"LongValueSum:{word}\t1")
