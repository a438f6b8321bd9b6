#!/usr/bin/env python3
"""Word Count's reducer (Hadoop streaming): lines come sorted by word; `word TAB count`."""
import sys

current, count = None, 0
for line in sys.stdin:
    word, _, value = line.rstrip("\n").partition("\t")
    if word != current:
        if current is not None:
            print(f"{current}\t{count}")
        current, count = word, 0
    count += int(value)
if current is not None:
    print(f"{current}\t{count}")
