"""BLASTx sky computing on the default testbed (thesis §3.6–3.7), medians of 3 runs:
parallel efficiency up to the host's core count (goal >= 85 %; beyond it the emulated
nodes share the same cores) and the elastic run's makespan against the non-extended run
and the ideal t_x + (T_base - t_x)·c/(c + c_add). Every run's hits must equal the
sequential run's. Side by side, the host's own ceiling: one blastx alone against as many
blastx at once as the host has cores (natively, no Dask), which is the most any platform
on this shared machine can get."""
import os
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


from benchmarks import common
from experiments import blastx_sky
from g5kdeploy import engine
from g5kdeploy.results import load
from g5kdeploy.sky import blast, data


def host_ceiling(cores: int, repeats: int = 3) -> float:
    """Median over repeats of T(one blastx alone) / T(`cores` blastx at once)."""
    with tempfile.TemporaryDirectory() as tmp:
        data.generate(data.Spec(proteins=blastx_sky.Params().proteins, queries=240, decoys=60), Path(tmp))
        db = str(data.make_database(Path(tmp) / "proteins.fasta", Path(tmp) / "db"))
        queries = (Path(tmp) / "queries.fasta").read_text()
        blast.blastx(queries, db)                       # warm: the database in the page cache
        ratios = []
        for _ in range(repeats):
            t0 = time.monotonic()
            blast.blastx(queries, db)
            alone = time.monotonic() - t0
            t0 = time.monotonic()
            with ThreadPoolExecutor(cores) as pool:
                list(pool.map(lambda _: blast.blastx(queries, db), range(cores)))
            ratios.append(alone / (time.monotonic() - t0))
    return statistics.median(ratios)


def main() -> None:
    tb = common.testbed()
    cores = os.cpu_count()
    ceiling = host_ceiling(cores)
    layouts = [{"rennes": 1}, {"rennes": 1, "nancy": 1}] + ([{"rennes": cores}] if cores > 2 else [{"rennes": 2}])
    run = engine.execute(blastx_sky.EXPERIMENT, tb, {"platforms": layouts, "loss": None, "repeats": 3})
    df = load(run.dir)
    print("\n".join(blastx_sky.EXPERIMENT.summary(df)))
    runs = df[df.level == "run"]
    static = blastx_sky.table_3_2(df)
    within = static[static.cores <= cores]
    print(f"efficiency up to {cores} host cores: {within.efficiency.min():.1%}..{within.efficiency.max():.1%} "
          f"(goal >= 85 %); the host's own ceiling, {cores} blastx at once natively: {ceiling:.1%}")
    for r in within.itertuples():
        print(f"  {r.platform:20} efficiency {r.efficiency:.1%}, {r.efficiency / ceiling:.1%} of the host's ceiling")
    e = runs[runs.kind == "elastic"]
    print(f"elastic (medians of {len(e)}): makespan {e.makespan_s.median():.1f} s, not extended "
          f"{e.baseline_s.median():.1f} s, ideal {e.ideal_s.median():.1f} s; extended/not extended "
          f"{(e.makespan_s / e.baseline_s).median():.2f}, extended/ideal {(e.makespan_s / e.ideal_s).median():.2f}; "
          f"join delay {(e.joined_at_s - e.extended_at_s).median():.1f} s")
    print(f"hits equal to the sequential run in every run: {bool(runs.hits_equal.all())}")
    print(f"rows: {run.dir}")


if __name__ == "__main__":
    main()
