"""One file per experiment: NAME, PARAMS, main(run, testbed, **params), summary(rows)."""
